"""pictofs against the official SDK on a realistic network, in one run.

Run: ``python tests/bench/bench_network.py [--quick] [--rtt 40ms] [--bandwidth 25MB]`` (needs
/dev/fuse and fusermount3; the ``pictograph`` SDK of the test extras). The name keeps it out of
pytest's collection: it is a script, not a test.

Users of pictofs talk to a hosted service tens of milliseconds away, where round trips and
bandwidth decide, not the CPU. This script starts its own reference server in a temporary
folder, puts the fault proxy (``tests/faultproxy.py``) in front of it with a network profile
(``--rtt``, half of it added each way; ``--bandwidth`` per connection and direction;
``--connect``, the TCP and TLS set-up of each new connection, one round trip by default), and
points both pictofs and the SDK at the proxy. Seeding goes to the server directly. Each row is
the median of the repetitions, pictofs and its baseline measured alternately on the same
profile:

1. sequential ``cat`` of N × ~500 KB on a fresh mount with an empty cache (the folder's listing
   included) vs the SDK downloading the same images with 8 threads; target ≤ 1.0× (under the
   table, once: the SDK's sequential loop);
2. 8 readers in random order, as a training data loader's workers read (a seeded permutation
   of the same images dealt to 8 threads, each opening and reading its files in turn, after
   the loader has listed the folder) on a fresh mount with an empty cache, vs the SDK with 8
   threads downloading in that order; target ≤ 0.5× (under the table, once: ``curl
   --parallel-max 24`` of the same images, the network's floor at the streams of 8 readers
   and a sweep, measured where ``curl`` is installed; and a minimal Python client, ``requests``
   with 24 threads in a process of its own, the same streams from the least a Python client
   does on this machine);
3. ``ls -lR`` of a fresh mount of a dataset of F folders × 50 images vs the SDK paging each
   folder one after the other (the folders call, then ``images.iter`` per folder); target ≤
   0.5×;
4. ``cp -r`` of M × 100 KB into a fresh mount + ``pictofs sync`` vs the SDK's
   ``upload_from_directory(max_workers=8)`` of the same folder into a fresh dataset; target ≤
   0.3×;
5. ``pictofs mount`` + ``ls`` of the root: the requests the proxy saw (target ≤ 3), with the
   connections opened and the wall time (mostly the start of two Python processes: the
   difference the network makes is lost in its variation under load, so it is not
   derived from it).

For every row the proxy's counters of the first repetition (requests, connections, bytes each
way) are printed under the table with the network's limit for that traffic: the bytes over the
bandwidth of one connection and of eight. The report is printed as plain text and again as
Markdown for ``docs/performance.md``. Everything (mounts, daemons, the proxy, the server,
temporary folders) is cleaned up, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# bench_read (beside this script) puts tests/ on sys.path for the harness and the proxy
from bench_read import (
    Row,
    Workspace,
    cat,
    exit_on_sigterm,
    force_unmount,
    grid,
    isolate_environment,
    load_average,
    log,
    run_and_report,
    table,
    timed,
)
from faultproxy import FaultProxy, ProxyStats
from harness import ServerHandle, stop_server
from imagegen import sized_jpeg
from seed import seed_images

import pictograph  # the official SDK, the baseline

from pictofs.api import Client
from pictofs.api import images as images_api
from pictofs.fs.fuse_session import mount_device
from pictofs.units import parse_duration, parse_size

API = "/api/v1/developer"
READ_SIZE = 500_000
UPLOAD_SIZE = 100_000
PER_FOLDER = 50
WORKERS = 8  # the SDK's threads, and the random readers
FLOOR_STREAMS = 24  # the random readers' streams and a sweep's (16 far away): curl's floor
READ_FOLDER = "photos"
# The least a Python client does to fetch the images, in a process of its own: one pooled
# session, FLOOR_STREAMS threads, each image's body written into a file as it comes.
PYTHON_FLOOR = """
import os, requests
from concurrent.futures import ThreadPoolExecutor
streams = int(os.environ["FLOOR_STREAMS"])
session = requests.Session()
session.headers["X-API-Key"] = os.environ["PICTOGRAPH_API_KEY"]
session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=streams))
def one(k_url):
    k, url = k_url
    with session.get(url, stream=True, timeout=60) as response:
        response.raise_for_status()
        with open(os.path.join(os.environ["FLOOR_OUT"], str(k)), "wb") as out:
            for piece in response.iter_content(1 << 18):
                out.write(piece)
with ThreadPoolExecutor(streams) as pool:
    list(pool.map(one, enumerate(os.environ["FLOOR_URLS"].split("\\n"))))
"""
UPLOAD_FOLDER = "photos"


@dataclass(frozen=True)
class Sizes:
    repetitions: int
    reads: int  # images of rows 1 and 2
    folders: int  # of row 3
    uploads: int  # files of row 4


FULL = Sizes(repetitions=3, reads=200, folders=20, uploads=300)
QUICK = Sizes(repetitions=1, reads=40, folders=5, uploads=60)


@dataclass(frozen=True)
class Traffic:
    """What the proxy saw during one measurement."""

    what: str
    requests: int
    connections: int
    down: int  # response body bytes
    up: int  # request body bytes
    routes: list[str]  # "METHOD path" of each request, in order

    @classmethod
    def of(cls, what: str, stats: ProxyStats) -> Traffic:
        return cls(what, len(stats.responses), stats.connections,
                   sum(r.bytes_sent for r in stats.responses),
                   sum(r.bytes_received for r in stats.responses),
                   [f"{r.method} {r.path.removeprefix(API)}" for r in stats.responses])


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class NetBench(Workspace):
    """The temporary world of one run, its measurements, and everything to tear down."""

    def __init__(self, root: Path, sizes: Sizes, rtt: float, bandwidth: float,
                 connect: float) -> None:
        super().__init__(root)
        self.sizes = sizes
        self.rtt, self.bandwidth, self.connect = rtt, bandwidth, connect
        self.server: ServerHandle | None = None
        self.client: Client | None = None
        self.proxy: FaultProxy | None = None
        self.env: dict[str, str] = {}
        self.mounts: list[Path] = []
        self.datasets = 0
        self.rows: list[Row] = []
        self.traffic: list[Traffic] = []
        self.references: list[tuple[str, float]] = []
        self.notes: list[str] = []
        self.mount_times: list[float] = []

    # -- setup ------------------------------------------------------------------------------

    def start(self) -> None:
        log("starting the reference server and the proxy")
        self.server, self.client = self.start_reference_server()
        self.proxy = FaultProxy(self.server.base_url).start()
        self.profile(True)
        self.env = dict(os.environ, PICTOGRAPH_API_KEY=self.server.key,
                        PICTOGRAPH_BASE_URL=self.proxy.url)

    def profile(self, on: bool) -> None:
        assert self.proxy is not None
        if on:
            self.proxy.network(rtt=self.rtt, bandwidth=self.bandwidth, connect=self.connect)
        else:
            self.proxy.network(None)

    def seed(self) -> None:
        assert self.client is not None
        s = self.sizes
        log(f"seeding {s.reads} × {READ_SIZE // 1000} KB, {s.folders} folders × {PER_FOLDER}")
        reads_id = self.client.projects.create("reads").id
        self.read_names = [f"img{i:04d}.jpg" for i in range(s.reads)]
        made = seed_images(self.client, reads_id, f"/{READ_FOLDER}", self.read_names,
                           data_for=lambda name: sized_jpeg(READ_SIZE, int(name[3:7])))
        self.read_ids = {name: image.id for name, (image, _data) in made.items()}
        tree_id = self.client.projects.create("tree").id
        for f in range(s.folders):
            seed_images(self.client, tree_id, f"/d{f:02d}",
                        [f"p{i:03d}.png" for i in range(PER_FOLDER)])
        log(f"writing {s.uploads} × {UPLOAD_SIZE // 1000} KB local files")
        self.source_parent = self.fresh_dir("source")
        source = self.source_parent / UPLOAD_FOLDER
        source.mkdir()
        for i in range(s.uploads):
            (source / f"up{i:05d}.jpg").write_bytes(sized_jpeg(UPLOAD_SIZE, 10_000 + i))
        self.source = source

    def new_dataset(self, kind: str) -> str:
        assert self.client is not None
        self.datasets += 1
        name = f"{kind}-{self.datasets}"
        self.client.projects.create(name)
        return name

    def sdk(self) -> pictograph.Client:
        """A fresh SDK client on the proxy: it opens its connections anew, as a mount does."""
        assert self.server is not None and self.proxy is not None
        return pictograph.Client(api_key=self.server.key, base_url=self.proxy.url,
                                 max_retries=0)

    # -- mounts -----------------------------------------------------------------------------

    def pictofs(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pictofs", *args], capture_output=True,
                              text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def mount(self, dataset: str) -> Path:
        mountpoint = self.fresh_dir("mnt")
        log_file = self.root / f"mount{self.counter}.log"
        self.logs.append(log_file)
        result = self.pictofs("mount", dataset, str(mountpoint), "--cache-dir",
                              str(self.fresh_dir("cache")), "--log-file", str(log_file))
        if result.returncode != 0:
            raise RuntimeError(f"pictofs mount failed: {result.stderr.strip()}")
        self.mounts.append(mountpoint)
        return mountpoint

    def umount(self, mountpoint: Path) -> None:
        self.mounts.remove(mountpoint)
        result = self.pictofs("umount", str(mountpoint))
        if result.returncode != 0:
            log(f"pictofs umount {mountpoint} failed ({result.stderr.strip()}); forcing it")
            force_unmount(mountpoint)

    def close(self) -> None:
        """Tear everything down; never raises."""
        for mountpoint in list(self.mounts):
            try:
                self.umount(mountpoint)
            except Exception as exc:  # keep cleaning up
                log(f"cleanup: {mountpoint}: {exc}")
        for path in self.root.iterdir():
            if mount_device(str(path)) is not None:
                force_unmount(path)
        if self.proxy is not None:
            self.proxy.stop()
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            stop_server(self.server)

    # -- bookkeeping ------------------------------------------------------------------------

    def watched(self, what: str, record: bool, action: Callable[[], object]) -> float:
        """Time ``action`` with the proxy's counters reset; keep them when ``record``."""
        assert self.proxy is not None
        self.proxy.wait_idle(60)
        self.proxy.reset_stats()
        elapsed = timed(action)
        if record:
            self.proxy.wait_idle(60)
            self.traffic.append(Traffic.of(what, self.proxy.stats))
        return elapsed

    # -- 1 and 2. reads ---------------------------------------------------------------------

    def sdk_download(self, names: list[str], workers: int) -> None:
        out = self.fresh_dir("downloads")
        with self.sdk() as sdk:
            def one(name: str) -> None:
                sdk.images.download("reads", f"{READ_FOLDER}/{name}", out / name)

            if workers == 1:
                for name in names:
                    one(name)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(one, names))
        got = sum(p.stat().st_size for p in out.iterdir())
        shutil.rmtree(out)
        if got != len(names) * READ_SIZE:
            raise RuntimeError(f"the SDK downloaded {got} bytes, expected "
                               f"{len(names) * READ_SIZE}")

    def reads(self) -> None:
        n, reps = self.sizes.reads, self.sizes.repetitions
        expected = n * READ_SIZE
        sequential = Row("1", f"Sequential `cat` of {n} × 500 KB (fresh mount, empty cache)",
                         f"SDK `images.download`, {WORKERS} threads", 1.0)
        random_order = Row("2", f"{WORKERS} readers in random order, {n} × 500 KB (fresh "
                                "mount, empty cache)",
                           f"SDK `images.download`, {WORKERS} threads, same order", 0.5)
        rng = random.Random(17)
        for rep in range(reps):
            log(f"reads {rep + 1}/{reps}: sequential cat")
            first = rep == 0
            mountpoint = self.mount("reads")
            folder = mountpoint / READ_FOLDER

            def cat_all() -> None:
                got = cat([folder / name for name in sorted(os.listdir(folder))])
                if got != expected:
                    raise RuntimeError(f"read {got} bytes through the mount, expected {expected}")

            sequential.ours.append(self.watched(sequential.name, first, cat_all))
            self.umount(mountpoint)
            sequential.base.append(self.watched(sequential.baseline, first,
                                                lambda: self.sdk_download(self.read_names,
                                                                          WORKERS)))

            log(f"reads {rep + 1}/{reps}: {WORKERS} readers in random order")
            order = list(self.read_names)
            rng.shuffle(order)
            mountpoint = self.mount("reads")
            folder = mountpoint / READ_FOLDER
            os.listdir(folder)  # the loader indexes its files first (untimed)
            random_order.ours.append(self.watched(random_order.name, first,
                                                  lambda: self.readers(folder, order)))
            self.umount(mountpoint)
            random_order.base.append(self.watched(random_order.baseline, first,
                                                  lambda: self.sdk_download(order, WORKERS)))
        self.rows += [sequential, random_order]
        log("reads: the SDK's sequential loop (once)")
        self.references.append((f"SDK `images.download` of the {n} images, one after the other",
                                self.watched("SDK sequential loop", True,
                                             lambda: self.sdk_download(self.read_names, 1))))
        log(f"reads: a minimal Python client, {FLOOR_STREAMS} at a time (once)")
        self.references.append((
            f"`requests`, {FLOOR_STREAMS} threads sharing one pool, of the {n} images into "
            "files, in a process of its own (the same streams from the least a Python client "
            "does on this machine)",
            self.watched(f"requests, {FLOOR_STREAMS} threads", True,
                         lambda: self.python_download(order, FLOOR_STREAMS))))
        if shutil.which("curl") is None:
            self.notes.append("No `curl`: the parallel floor of the reads was not measured.")
            return
        log(f"reads: curl, {FLOOR_STREAMS} at a time (once)")
        self.references.append((
            f"`curl --parallel-max {FLOOR_STREAMS}` of the {n} images (the network's floor at "
            f"the streams of {WORKERS} readers and a sweep: no FUSE, no Python)",
            self.watched("curl --parallel", True, lambda: self.curl_download(FLOOR_STREAMS))))

    def python_download(self, names: list[str], streams: int) -> None:
        """The images' bytes through the proxy into files, by a process with ``streams``
        threads sharing one ``requests`` session: no FUSE, no cache, no SDK."""
        assert self.server is not None and self.proxy is not None
        out = self.fresh_dir("python-downloads")
        urls = [f"{self.proxy.url}{API}/images/{self.read_ids[name]}" for name in names]
        env = dict(self.env, FLOOR_URLS="\n".join(urls), FLOOR_OUT=str(out),
                   FLOOR_STREAMS=str(streams))
        subprocess.run([sys.executable, "-c", PYTHON_FLOOR], check=True, timeout=600,
                       env=env, stdin=subprocess.DEVNULL)
        got = sum(p.stat().st_size for p in out.iterdir())
        shutil.rmtree(out)
        if got != len(names) * READ_SIZE:
            raise RuntimeError(f"the minimal client downloaded {got} bytes, expected "
                               f"{len(names) * READ_SIZE}")

    def curl_download(self, streams: int) -> None:
        """The read images' bytes route through the proxy, ``streams`` at a time, by curl."""
        assert self.server is not None and self.proxy is not None
        config = self.root / "curl.cfg"
        config.write_text(f'header = "X-API-Key: {self.server.key}"\n'  # not in argv
                          + "".join(f'url = "{self.proxy.url}{API}/images/{image_id}"\n'
                                    'output = "/dev/null"\n'
                                    for image_id in self.read_ids.values()))
        subprocess.run(["curl", "--silent", "--fail", "--location", "--parallel",
                        "--parallel-max", str(streams), "--config", str(config)],
                       check=True, timeout=600, stdin=subprocess.DEVNULL)

    def readers(self, folder: Path, order: list[str]) -> None:
        """``WORKERS`` threads, each reading its share of ``order`` file by file."""
        totals = [0] * WORKERS
        errors: list[BaseException] = []

        def reader(k: int) -> None:
            try:
                totals[k] = cat([folder / name for name in order[k::WORKERS]])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if sum(totals) != len(order) * READ_SIZE:
            raise RuntimeError(f"the readers got {sum(totals)} bytes, expected "
                               f"{len(order) * READ_SIZE}")

    # -- 3. ls -lR --------------------------------------------------------------------------

    def listing(self) -> None:
        f, reps = self.sizes.folders, self.sizes.repetitions
        expected = f * PER_FOLDER
        row = Row("3", f"`ls -lR` of {f} folders × {PER_FOLDER} (fresh mount)",
                  "SDK: the folders call, then `images.iter` of each folder in turn", 0.5)

        def ls_lr(mountpoint: Path) -> None:
            result = subprocess.run(["ls", "-lR", str(mountpoint)], capture_output=True,
                                    text=True, env=dict(os.environ, LC_ALL="C"), timeout=600)
            files = sum(1 for line in result.stdout.splitlines() if line.startswith("-"))
            if result.returncode != 0 or files != expected:
                raise RuntimeError(f"ls -lR listed {files} files, expected {expected} "
                                   f"({result.stderr.strip()[:300]})")

        def sdk_pages() -> None:
            with self.sdk() as sdk:
                folders = sdk.directories.list("tree", parent_path="")
                got = sum(len(sdk.images.iter("tree", directory_path=d.full_path,
                                              page_size=1000).all()) for d in folders)
            if got != expected:
                raise RuntimeError(f"the SDK listed {got} images, expected {expected}")

        for rep in range(reps):
            log(f"ls -lR {rep + 1}/{reps}")
            mountpoint = self.mount("tree")
            row.ours.append(self.watched(row.name, rep == 0, lambda: ls_lr(mountpoint)))
            self.umount(mountpoint)
            row.base.append(self.watched(row.baseline, rep == 0, sdk_pages))
        self.rows.append(row)

    # -- 4. cp -r + pictofs sync ------------------------------------------------------------

    def uploads(self) -> None:
        m, reps = self.sizes.uploads, self.sizes.repetitions
        row = Row("4", f"`cp -r` of {m} × 100 KB + `pictofs sync` (fresh mount)",
                  f"SDK `upload_from_directory(max_workers={WORKERS})`", 0.3)
        for rep in range(reps):
            log(f"cp -r + sync {rep + 1}/{reps}")
            dataset = self.new_dataset("cp")
            mountpoint = self.mount(dataset)

            def copy_and_sync() -> None:
                subprocess.run(["cp", "-r", str(self.source), f"{mountpoint}/"], check=True,
                               timeout=600)
                result = self.pictofs("sync", str(mountpoint))
                if result.returncode != 0:
                    raise RuntimeError(f"pictofs sync failed: {result.stderr.strip()[:500]}")

            row.ours.append(self.watched(row.name, rep == 0, copy_and_sync))
            self.umount(mountpoint)
            self.check_landed(dataset)

            dataset = self.new_dataset("sdk")

            def sdk_upload() -> None:
                with self.sdk() as sdk:
                    report = sdk.images.upload_from_directory(
                        dataset, self.source_parent, max_workers=WORKERS,
                        create_if_missing=False)
                if report.images_uploaded != m or report.failures:
                    raise RuntimeError(f"upload_from_directory: {report.images_uploaded} of {m} "
                                       f"uploaded, failures {report.failures[:3]}")

            row.base.append(self.watched(row.baseline, rep == 0, sdk_upload))
            self.check_landed(dataset)
        self.rows.append(row)

    def check_landed(self, dataset: str) -> None:
        """Untimed: every file is in the dataset's folder."""
        assert self.client is not None
        got = {image.filename for image in images_api.iter_images(
            self.client.transport, dataset, directory_path=f"/{UPLOAD_FOLDER}")}
        if len(got) != self.sizes.uploads:
            raise RuntimeError(f"{dataset}: {len(got)} images landed, "
                               f"expected {self.sizes.uploads}")

    # -- 5. mount + ls ----------------------------------------------------------------------

    def mount_and_ls(self) -> None:
        reps = self.sizes.repetitions
        for rep in range(reps):
            log(f"mount + ls {rep + 1}/{reps}")
            holder: list[Path] = []

            def mount_ls() -> None:
                mountpoint = self.mount("reads")
                holder.append(mountpoint)
                subprocess.run(["ls", str(mountpoint)], check=True, capture_output=True)

            self.mount_times.append(self.watched("`pictofs mount` + `ls` of the root",
                                                 rep == 0, mount_ls))
            self.umount(holder[0])


# --------------------------------------------------------------------------- the report


def traffic_table(bench: NetBench, markdown: bool) -> str:
    head = ["Measurement (first repetition)", "Requests", "Connections", "Down", "Up",
            "Bytes / bandwidth", f"… / {WORKERS} connections"]
    lines = []
    for t in bench.traffic:
        seconds = (t.down + t.up) / bench.bandwidth
        lines.append([t.what, str(t.requests), str(t.connections), mb(t.down), mb(t.up),
                      f"{seconds:.2f} s", f"{seconds / WORKERS:.2f} s"])
    return grid(head, lines, markdown)


def report(bench: NetBench, quick: bool, markdown: bool) -> str:
    bullet = "- " if markdown else "  "
    sizes = bench.sizes
    lines = [f"Network profile: {bench.rtt * 1000:.0f} ms round trip (half each way), "
             f"{bench.bandwidth / 1e6:g} MB/s per connection, {bench.connect * 1000:.0f} ms "
             "to set up a connection.",
             f"Medians of {sizes.repetitions} repetitions"
             f"{' (--quick: fewer and smaller)' if quick else ''}, range in parentheses (ms); "
             "ratio = pictofs median / baseline median, lower is better.", ""]
    if bench.rows:
        lines += [table(bench.rows, markdown), ""]
    mount_traffic = [t for t in bench.traffic if t.what.startswith("`pictofs mount`")]
    if bench.mount_times and mount_traffic:
        t = mount_traffic[0]
        verdict = "PASS" if t.requests <= 3 else "MISS"
        lines += [f"Row 5, `pictofs mount` + `ls` of the root: {t.requests} requests on "
                  f"{t.connections} connections (target ≤ 3 requests: {verdict}), "
                  f"{statistics.median(bench.mount_times) * 1000:.0f} ms. The requests: "
                  + ", ".join(f"`{r}`" if markdown else r for r in t.routes) + ".", ""]
    lines.append("Reference timings (no target):")
    lines += [f"{bullet}{what}: {seconds * 1000:.0f} ms" for what, seconds in bench.references]
    lines += ["", "What crossed the proxy (bytes over one connection's bandwidth, and over "
              f"{WORKERS} in parallel, are the network's floor for that traffic):", "",
              traffic_table(bench, markdown)]
    if bench.notes:
        lines.append("")
        lines += [f"{bullet}{note}" for note in bench.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.repetitions} repetition, {QUICK.reads} images, "
                             f"{QUICK.folders} folders, {QUICK.uploads} uploads")
    parser.add_argument("--rtt", default="40ms", help="round trip time (default 40ms)")
    parser.add_argument("--bandwidth", default="25MB",
                        help="bytes per second per connection (default 25MB: 25 × 10^6; "
                             "suffixes K, M, G are powers of 1024)")
    parser.add_argument("--connect", default=None,
                        help="set-up time of a new connection (default: one round trip)")
    parser.add_argument("--only", action="append", default=[],
                        choices=["reads", "listing", "uploads", "mount"],
                        help="measure these rows only (repeatable)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rtt = parse_duration(args.rtt)
    bandwidth = (float(args.bandwidth[:-2]) * 1e6 if args.bandwidth.endswith("MB")
                 else float(parse_size(args.bandwidth)))
    connect = rtt if args.connect is None else parse_duration(args.connect)

    exit_on_sigterm()
    bench = NetBench(Path(tempfile.mkdtemp(prefix="pictofs-bench-net-")), sizes, rtt,
                     bandwidth, connect)
    load_before = load_average()
    only = set(args.only) or {"reads", "listing", "uploads", "mount"}

    def measure() -> None:
        isolate_environment(bench.root)
        bench.start()
        bench.seed()
        if "reads" in only:
            bench.reads()
        if "listing" in only:
            bench.listing()
        if "uploads" in only:
            bench.uploads()
        if "mount" in only:
            bench.mount_and_ls()
        bench.notes.append(f"Load average (1 min) at start / end: {load_before} / "
                           f"{load_average()} on {os.cpu_count()} CPUs.")

    return run_and_report(bench, measure,
                          lambda markdown: report(bench, args.quick, markdown=markdown))


if __name__ == "__main__":
    sys.exit(main())
