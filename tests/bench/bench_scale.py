"""Scale benchmark: a folder of 100,000 images (and, opt-in, an organization of a million).

Run: ``python tests/bench/bench_scale.py [--quick] [--images N] [--org FOLDERS PER_FOLDER]``
(needs /dev/fuse and fusermount3; the official SDK ``pictograph`` for the baseline). The name
keeps it out of pytest's collection: it is a script, not a test.

It starts its own reference server in a temporary folder, uploads one real JPEG into the
folder ``/big`` of a dataset and clones its row in the server's database until the folder
holds ``--images`` images (default 100,000; the clones share the bytes, as blobs are named
by hash). Then, each the median of ``--repeat`` runs:

1. the first ``ls -l`` of the folder on a fresh mount (fresh cache and state) against the
   official SDK paging the same folder (``images.iter(page_size=1000)``, every item parsed);
   target <= 1.0x;
2. a warm ``ls -l`` on the same mount (after the kernel's 1 s attribute timeout, within
   ``--dir-cache-time``); target <= 0.4 s; beside it, the floor of any filesystem on this
   machine: ``ls -l`` of as many empty files in a folder of a tmpfs (``/dev/shm`` or, where
   there is none, the temporary folder), listed once untimed first;
3. the daemon's peak resident memory (``VmHWM``) after those listings; target <= 150 MB;
4. the server's answer time for a page of 1,000 of that folder (from the request to the
   last byte of the answer; the client's decoding of the JSON is not timed), over 300 pages
   at random offsets (p50 and p99: the third slowest; over 100 pages the p99 was the
   slowest single answer); target p99 <= 50 ms.

Beside row 1, the floor of any cold listing by this client of this server, measured in the
same run: the folder's pages fetched ``PARALLEL_PAGES`` at a time, as the mount fetches them,
by a plain ``requests`` session that only decodes their JSON (the first page alone, then the
rest once its total is known), plus the tmpfs ``ls -l`` of row 2. The reference server is one
Python process: it answers pages one after the other, whatever the client asks in parallel.

With ``--rtt`` (e.g. ``--rtt 40ms``; opt-in), the mount, the SDK and the floor's fetch go
through the fault proxy (``tests/faultproxy.py``) with that network profile: half the round
trip each way, ``--bandwidth`` per connection (default 25 MB/s, as ``bench_network.py``), a
round trip to set up each connection. Seeding and the server's page times (row 4) go to the
server directly.

With ``--org FOLDERS PER_FOLDER`` (opt-in: a million images takes minutes to seed and to
walk), a second dataset of FOLDERS folders of PER_FOLDER images each is cloned, and an
organization mount's ``find MOUNT -type f | wc -l`` is timed with the daemon's peak memory
(targets: <= 120 s and <= 400 MB for 1,000 x 1,000).

Every row is printed with its target and PASS or MISS, as plain text and as Markdown.
Everything (mounts, the server, temporary folders) is cleaned up, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import requests  # noqa: E402
from bench_read import (  # noqa: E402
    Workspace,
    exit_on_sigterm,
    force_unmount,
    isolate_environment,
    load_average,
    log,
    run_and_report,
    timed,
)
from faultproxy import FaultProxy  # noqa: E402
from harness import ServerHandle, stop_server  # noqa: E402
from imagegen import sized_jpeg  # noqa: E402

from pictofs.api import Client  # noqa: E402
from pictofs.core.tree.listing import PAGE_SIZE, PARALLEL_PAGES  # noqa: E402
from pictofs.units import parse_duration, parse_size  # noqa: E402

API = "/api/v1/developer"
DIR_CACHE_TIME = "10m"


def peak_rss_mb(pid: int) -> float:
    """The peak resident set of a process so far (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def count_files(command: list[str], expected: int) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                            env=dict(os.environ, LC_ALL="C"))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()[:500]}")
    if command[0] == "ls":
        rows = sum(1 for line in result.stdout.splitlines() if line.startswith("-"))
    else:
        rows = sum(1 for line in result.stdout.splitlines() if line)
    if rows != expected:
        raise RuntimeError(f"{' '.join(command)} listed {rows} files, expected {expected}")


@dataclass
class Row:
    name: str
    value: str
    baseline: str
    ratio: str
    target: str
    result: str


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass(frozen=True)
class Network:
    """A network profile for the fault proxy (seconds, bytes per second)."""

    rtt: float
    bandwidth: float
    connect: float

    def describe(self) -> str:
        return (f"{self.rtt * 1000:.0f} ms round trip, {self.bandwidth / 1e6:.0f} MB/s per "
                f"connection, {self.connect * 1000:.0f} ms to set up a connection")


class Bench(Workspace):
    def __init__(self, root: Path, repeat: int, network: Network | None = None) -> None:
        super().__init__(root)
        self.repeat = repeat
        self.network = network
        self.proxy: FaultProxy | None = None
        self.base_url = ""  # where the mount, the SDK and the floor's fetch send requests
        self.server: ServerHandle | None = None
        self.client: Client | None = None
        self.env: dict[str, str] = {}
        self.mounts: list[Path] = []
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def start(self) -> None:
        log("starting the reference server")
        self.server, self.client = self.start_reference_server()
        self.base_url = self.server.base_url
        if self.network is not None:
            log(f"starting the proxy: {self.network.describe()}")
            self.proxy = FaultProxy(self.server.base_url).start()
            self.proxy.network(rtt=self.network.rtt, bandwidth=self.network.bandwidth,
                               connect=self.network.connect)
            self.base_url = self.proxy.url
        self.env = dict(os.environ, PICTOGRAPH_API_KEY=self.server.key,
                        PICTOGRAPH_BASE_URL=self.base_url)

    # -- seeding ------------------------------------------------------------------------------

    def seed(self, dataset: str, folders: list[str], per_folder: int) -> str:
        """A dataset whose ``folders`` hold ``per_folder`` images each: one real upload,
        cloned in the server's database (new id, name and time for each)."""
        assert self.client is not None and self.server is not None
        dataset_id = self.client.projects.create(dataset).id
        source = self.root / "seed.jpg"
        source.write_bytes(sized_jpeg(20_000, seed=1))
        first = self.client.images.upload(dataset_id, source, folder_path=folders[0])
        db = sqlite3.connect(self.server.data_dir / "pictofs.db", timeout=60)
        db.row_factory = sqlite3.Row
        try:
            row = dict(db.execute("SELECT * FROM images WHERE id = ?", (first.id,)).fetchone())
            now = time.time()
            started = time.perf_counter()
            with db:
                for folder in folders:
                    db.execute("INSERT OR IGNORE INTO directories (id, dataset_id, full_path,"
                               " created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                               (str(uuid.uuid4()), dataset_id, folder, now, now))
                    start = 1 if folder == folders[0] else 0
                    db.executemany(
                        "INSERT INTO images (id, dataset_id, directory_path, filename,"
                        " file_size, width, height, content_type, blob, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        ((str(uuid.uuid4()), dataset_id, folder, f"img_{i:07d}.jpg",
                          row["file_size"], row["width"], row["height"], row["content_type"],
                          row["blob"], now + i * 1e-6) for i in range(start, per_folder)))
            log(f"seeded {len(folders) * per_folder:,} images in {len(folders)} folder(s) "
                f"in {time.perf_counter() - started:.1f} s")
        finally:
            db.close()
        return dataset_id

    # -- mounts -------------------------------------------------------------------------------

    def pictofs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pictofs", *args], capture_output=True,
                              text=True, env=self.env, timeout=600)

    def mount(self, dataset: str | None) -> Path:
        mountpoint = self.fresh_dir("mnt")
        places = [dataset, str(mountpoint)] if dataset else [str(mountpoint)]
        result = self.pictofs("mount", *places, "--cache-dir", str(self.fresh_dir("cache")),
                              "--dir-cache-time", DIR_CACHE_TIME,
                              "--log-file", str(self.root / f"mount{self.counter}.log"))
        if result.returncode != 0:
            raise RuntimeError(f"pictofs mount failed: {result.stderr.strip()}")
        self.mounts.append(mountpoint)
        return mountpoint

    def daemon_pid(self, mountpoint: Path) -> int:
        result = self.pictofs("status", "--json", str(mountpoint))
        if result.returncode != 0:
            raise RuntimeError(f"pictofs status failed: {result.stderr.strip()}")
        return int(json.loads(result.stdout)["pid"])

    def umount(self, mountpoint: Path) -> None:
        self.mounts.remove(mountpoint)
        if self.pictofs("umount", str(mountpoint)).returncode != 0:
            force_unmount(mountpoint)

    def close(self) -> None:
        for mountpoint in list(self.mounts):
            try:
                self.umount(mountpoint)
            except Exception as exc:  # keep cleaning up
                log(f"unmounting {mountpoint}: {exc}")
        if self.client is not None:
            self.client.close()
        if self.proxy is not None:
            self.proxy.stop()
        if self.server is not None:
            stop_server(self.server)

    # -- measurements -------------------------------------------------------------------------

    def sdk_paging(self, dataset: str, folder: str, expected: int) -> float:
        import pictograph

        assert self.server is not None
        os.environ["PICTOGRAPH_API_KEY"] = self.server.key
        os.environ["PICTOGRAPH_BASE_URL"] = self.base_url
        with pictograph.Client() as sdk:
            def page_all() -> None:
                seen = sum(1 for _ in sdk.images.iter(dataset, directory_path=folder,
                                                      page_size=1000))
                if seen != expected:
                    raise RuntimeError(f"the SDK paged {seen} images, expected {expected}")
            return timed(page_all)

    def pages_at_once(self, dataset: str, folder: str, expected: int) -> float:
        """The floor of a cold listing's fetch: every page of ``folder``, the first alone
        and the rest ``PARALLEL_PAGES`` at a time once its total is known, by a plain
        session that decodes each page's JSON and keeps nothing else; its time."""
        assert self.server is not None
        url = self.base_url + API + "/images/"

        def run() -> None:
            with requests.Session() as session:
                session.headers["X-API-Key"] = self.server.key  # type: ignore[union-attr]
                session.mount("http://", requests.adapters.HTTPAdapter(
                    pool_maxsize=PARALLEL_PAGES))

                def page(offset: int) -> dict:
                    answer = session.get(url, params={"dataset": dataset,
                                                      "directory_path": folder,
                                                      "limit": PAGE_SIZE, "offset": offset},
                                         timeout=60)
                    answer.raise_for_status()
                    return answer.json()

                first = page(0)
                total = first["pagination"]["total"]
                with ThreadPoolExecutor(PARALLEL_PAGES) as pool:
                    rest = list(pool.map(page, range(PAGE_SIZE, total, PAGE_SIZE)))
                seen = sum(len(p["data"]) for p in [first, *rest])
                if seen != expected:
                    raise RuntimeError(f"the pages held {seen} images, expected {expected}")
        return timed(run)

    def folder(self, images: int) -> None:
        dataset = "big"
        self.seed(dataset, ["/big"], images)
        sdk_times = [self.sdk_paging(dataset, "/big", images) for _ in range(self.repeat)]
        fetches = [self.pages_at_once(dataset, "/big", images) for _ in range(self.repeat)]
        cold, warm, rss = [], [], []
        for _ in range(self.repeat):
            mountpoint = self.mount(dataset)
            folder = mountpoint / "big"
            cold.append(timed(lambda: count_files(["ls", "-l", str(folder)], images)))
            time.sleep(1.1)  # past the kernel's attribute timeout: the daemon answers again
            warm.append(timed(lambda: count_files(["ls", "-l", str(folder)], images)))
            rss.append(peak_rss_mb(self.daemon_pid(mountpoint)))
            self.umount(mountpoint)
        floor = self.tmpfs_floor(images)
        sdk, c, w, fetch = (statistics.median(x) for x in (sdk_times, cold, warm, fetches))
        below = " (below the floor)" if fetch + floor > sdk and c > sdk else ""
        self.rows.append(Row(f"cold `ls -l` of a {images:,}-image folder, fresh mount",
                             f"{c:.2f} s", f"SDK paging it: {sdk:.2f} s", f"{c / sdk:.2f}x",
                             "<= 1.0x", verdict(c <= sdk) + below))
        self.rows.append(Row("floor of that cold listing: its pages fetched "
                             f"{PARALLEL_PAGES} at a time + tmpfs `ls -l`",
                             f"{c:.2f} s", f"{fetch:.2f} + {floor:.2f} = {fetch + floor:.2f} s",
                             f"{c / (fetch + floor):.2f}x", "-", "-"))
        self.rows.append(Row("warm `ls -l` of that folder (same mount)", f"{w:.2f} s",
                             f"floor: `ls -l` of {images:,} empty files on tmpfs: "
                             f"{floor:.2f} s", f"{w / floor:.2f}x", "<= 0.4 s",
                             verdict(w <= 0.4) + (" (below the floor)" if floor > 0.4
                                                  else "")))
        peak = max(rss)
        self.rows.append(Row("daemon peak RSS after both listings", f"{peak:.0f} MB", "-",
                             "-", "<= 150 MB", verdict(peak <= 150)))
        self.notes.append("Repetitions: cold " + ", ".join(f"{t:.2f}" for t in cold)
                          + " s; warm " + ", ".join(f"{t:.2f}" for t in warm)
                          + " s; SDK " + ", ".join(f"{t:.2f}" for t in sdk_times)
                          + " s; pages at once " + ", ".join(f"{t:.2f}" for t in fetches)
                          + " s.")
        self.page_latency(dataset, "/big", images)

    def tmpfs_floor(self, images: int) -> float:
        """``ls -l`` of ``images`` empty files in one folder of a tmpfs, the median of
        ``--repeat`` runs after an untimed one: what listing that many files costs ``ls``
        and the kernel with no FUSE daemon at all."""
        shm = Path("/dev/shm")
        folder = Path(tempfile.mkdtemp(prefix="pictofs-floor-",
                                       dir=shm if shm.is_dir() else None))
        try:
            for i in range(images):
                (folder / f"img_{i:07d}.jpg").touch()
            count_files(["ls", "-l", str(folder)], images)
            return statistics.median(
                timed(lambda: count_files(["ls", "-l", str(folder)], images))
                for _ in range(self.repeat))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def page_latency(self, dataset: str, folder: str, images: int, pages: int = 300) -> None:
        assert self.server is not None
        session = requests.Session()
        session.headers["X-API-Key"] = self.server.key
        url = self.server.base_url + API + "/images/"
        times = []
        rng = random.Random(7)
        for _ in range(pages):
            offset = rng.randrange(0, max(1, images - 1000))
            started = time.perf_counter()
            answer = session.get(url, params={"dataset": dataset, "directory_path": folder,
                                              "limit": 1000, "offset": offset}, timeout=60)
            answer.raise_for_status()
            answer.content  # the whole answer received: the server's time ends here
            times.append(time.perf_counter() - started)
            if len(answer.json()["data"]) != min(1000, images - offset):  # untimed check
                raise RuntimeError(f"a page at offset {offset} is not whole")
        times.sort()
        p50 = statistics.median(times)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        self.rows.append(Row(f"server: a page of 1,000 of that folder ({pages} random offsets)",
                             f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms", "-", "-",
                             "p99 <= 50 ms", verdict(p99 <= 0.050)))

    def organization(self, folders: int, per_folder: int, elsewhere: int) -> None:
        """``elsewhere``: the images of the other datasets, which the find sees too."""
        total = folders * per_folder
        self.seed("org", [f"/f{i:04d}" for i in range(folders)], per_folder)
        mountpoint = self.mount(None)
        expected = total + elsewhere
        elapsed = timed(lambda: count_files(["find", str(mountpoint), "-type", "f"], expected))
        peak = peak_rss_mb(self.daemon_pid(mountpoint))
        self.umount(mountpoint)
        self.rows.append(Row(f"organization mount: `find -type f` of {total:,} images in "
                             f"{folders:,} folders", f"{elapsed:.1f} s", "-", "-", "<= 120 s",
                             verdict(elapsed <= 120)))
        self.rows.append(Row("daemon peak RSS for that find", f"{peak:.0f} MB", "-", "-",
                             "<= 400 MB", verdict(peak <= 400)))

    images_elsewhere = 0


def report(bench: Bench, markdown: bool) -> str:
    head = ["Measurement", "pictofs", "Baseline", "Ratio", "Target", "Result"]
    lines = [[r.name, r.value, r.baseline, r.ratio, r.target, r.result] for r in bench.rows]
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
    else:
        widths = [max(len(x) for x in column) for column in zip(head, *lines)]
        out = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *lines]]
    return "\n".join(out + [""] + [f"- {note}" for note in bench.notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 images, 1 repetition")
    parser.add_argument("--images", type=int, default=100_000, help="images in the folder")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median)")
    parser.add_argument("--org", type=int, nargs=2, metavar=("FOLDERS", "PER_FOLDER"),
                        help="also an organization mount's find over FOLDERS x PER_FOLDER")
    parser.add_argument("--rtt", default=None,
                        help="put the mount and the SDK behind a network of this round trip "
                             "(e.g. 40ms; default: loopback, no proxy)")
    parser.add_argument("--bandwidth", default="25MB",
                        help="with --rtt: bytes per second per connection (default 25MB: "
                             "25 × 10^6; suffixes K, M, G are powers of 1024)")
    args = parser.parse_args(argv)
    images, repeat = (20_000, 1) if args.quick else (args.images, args.repeat)
    network = None
    if args.rtt is not None:
        rtt = parse_duration(args.rtt)
        bandwidth = (float(args.bandwidth[:-2]) * 1e6 if args.bandwidth.endswith("MB")
                     else float(parse_size(args.bandwidth)))
        network = Network(rtt, bandwidth, rtt)

    exit_on_sigterm()
    bench = Bench(Path(tempfile.mkdtemp(prefix="pictofs-bench-")), repeat, network)
    load_before = load_average()

    def measure() -> None:
        isolate_environment(bench.root)
        bench.start()
        bench.folder(images)
        if args.org:
            bench.organization(*args.org, elsewhere=images)
        if network is not None:
            bench.notes.append(f"Network (the fault proxy): {network.describe()}.")
        bench.notes.append(f"Load average (1 min) at start / end: {load_before} / "
                           f"{load_average()} on {os.cpu_count()} CPUs.")

    return run_and_report(bench, measure, lambda markdown: report(bench, markdown=markdown))


if __name__ == "__main__":
    sys.exit(main())
