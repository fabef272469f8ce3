"""Mirror-mode benchmark: ``pictofs mirror`` against the plain alternatives, in one run.

Run: ``python tests/bench/bench_mirror.py [--quick] [--repetitions N] [--reconcile-only]``
(``--reconcile-only``: row 2 alone, to iterate on it).

It starts its own reference server in a temporary folder and measures:

1. close-to-visible latency: a mirror watches an empty folder with the default ``--settle``
   (2 s); files are written one after the other (one every 100 ms), and a poller lists the
   dataset through the API every 50 ms; latency = first listing that shows the file − the
   moment its writer closed it. p50 and p95 over N files; target p95 ≤ settle + 1 s;
2. start-up reconcile of N files (nested folders) with ``pictofs mirror --once`` against
   ``upload_dataset_from_folder(max_workers=8)`` of the same folder into another fresh
   dataset, one right after the other; both run as a fresh ``python`` process, so both pay
   the interpreter start-up (pictofs's modules are byte-compiled first, as an installed
   wheel's are: an editable install under ``PYTHONDONTWRITEBYTECODE=1`` would otherwise
   compile every module it imports in every process, and the mirror imports more of them);
   the ratio is the median of the pairs' ratios (robust to a machine whose load changes
   between pairs); target ≤ 1.0×;
3. restart over M already-mirrored files (``--once`` again over an unchanged tree): the time,
   and the upload requests the server saw (must be 0).

The table is printed at the end, also as Markdown for ``docs/performance.md``. Everything
(the server, the mirror, temporary folders) is cleaned up, also on failure.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # harness, imagegen

from harness import ServerHandle, start_server, stop_server  # noqa: E402
from imagegen import png_bytes  # noqa: E402

import pictofs  # noqa: E402
from pictofs.api import Client  # noqa: E402
from pictofs.api import images as images_api  # noqa: E402

SETTLE = 2.0
UPLOAD_ROUTES = (("POST", "upload-url"), ("POST", "register"), ("PUT", "storage/upload"))


@dataclass(frozen=True)
class Sizes:
    latency_files: int
    reconcile_files: int
    repetitions: int
    restart_files: int


FULL = Sizes(latency_files=100, reconcile_files=1000, repetitions=3, restart_files=10_000)
QUICK = Sizes(latency_files=20, reconcile_files=200, repetitions=1, restart_files=1000)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_tree(root: Path, count: int, seed: int = 0) -> None:
    """``count`` distinct PNGs (64×48) in nested folders, 100 to a folder."""
    for n in range(count):
        folder = root / f"set{n // 100 % 10}" / (f"part{n // 1000}" if n >= 1000 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{n:05d}.png").write_bytes(png_bytes(seed + n, (64, 48)))


def upload_calls(server: ServerHandle) -> int:
    return sum(server.calls(method, route) for method, route in UPLOAD_ROUTES)


class Env:
    """The server, a client, and the environment for the commands."""

    def __init__(self, work: Path, server: ServerHandle) -> None:
        self.work = work
        self.server = server
        self.client = Client(api_key=server.key, base_url=server.base_url)
        self.env = {**os.environ, "PICTOGRAPH_API_KEY": server.key,
                    "PICTOGRAPH_BASE_URL": server.base_url,
                    "XDG_STATE_HOME": str(work / "state"), "HOME": str(work / "home")}
        self.datasets = 0

    def dataset(self, prefix: str) -> str:
        self.datasets += 1
        return self.client.projects.create(f"{prefix}-{self.datasets}").name

    def mirror(self, local: Path, target: str, *options: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "pictofs", "mirror", str(local), target,
                                 *options], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=open(self.work / "mirror.log", "a"), text=True)

    def once(self, local: Path, target: str) -> float:
        start = time.perf_counter()
        process = self.mirror(local, target, "--once")
        if process.wait(timeout=3600) != 0:
            raise RuntimeError(f"pictofs mirror --once exited {process.returncode}; see "
                               f"{self.work / 'mirror.log'}")
        return time.perf_counter() - start

    def workflow(self, local: Path, dataset: str) -> float:
        code = ("import sys; from pictofs.api import Client; "
                "from pictofs.workflows import upload_dataset_from_folder as up; "
                "r = up(Client(), sys.argv[1], sys.argv[2], organize_by_class=False, "
                "max_workers=8); sys.exit(1 if r.failures else 0)")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, dataset, str(local)], env=self.env,
                       check=True, timeout=3600)
        return time.perf_counter() - start


# ---------------------------------------------------------------------- measurements


def latency(env: Env, count: int) -> list[float]:
    root = env.work / "latency"
    root.mkdir()
    name = env.dataset("latency")
    dataset_id = env.client.projects.get(name).id
    process = env.mirror(root, name)
    closed: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            page = images_api.list_page(env.client.transport, dataset_id, limit=1000)
            now = time.monotonic()
            for image in page.items:
                seen.setdefault(image.filename, now)
            time.sleep(0.05)

    try:
        wait_log(env.work / "mirror.log", "to upload", process)
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        for n in range(count):
            data = png_bytes(50_000 + n, (64, 48))
            with open(root / f"shot{n:03d}.png", "wb") as out:
                out.write(data)
            closed[f"shot{n:03d}.png"] = time.monotonic()
            time.sleep(0.1)
        deadline = time.monotonic() + 120
        while len(seen) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        done.set()
        poller.join()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    if len(seen) < count:
        raise RuntimeError(f"only {len(seen)} of {count} files became visible")
    return sorted(seen[name] - closed[name] for name in closed)


def wait_log(path: Path, text: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if process.poll() is not None:
            raise RuntimeError(f"the mirror exited {process.returncode}; see {path}")
        time.sleep(0.05)
    raise RuntimeError(f"the mirror did not log {text!r}; see {path}")


def reconcile(env: Env, count: int, repetitions: int) -> tuple[list[float], list[float]]:
    ours, base = [], []
    for rep in range(repetitions):
        root = env.work / f"reconcile{rep}"
        make_tree(root, count, seed=100_000 * (rep + 1))
        base.append(env.workflow(root, env.dataset("workflow")))
        ours.append(env.once(root, env.dataset("mirror")))
        log(f"  reconcile {rep + 1}: mirror {ours[-1]:.2f}s, workflow {base[-1]:.2f}s")
        shutil.rmtree(root)
    return ours, base


def restart(env: Env, count: int) -> tuple[float, float, int]:
    root = env.work / "restart"
    make_tree(root, count, seed=900_000)
    name = env.dataset("restart")
    first = env.once(root, name)
    before = upload_calls(env.server)
    again = env.once(root, name)
    return first, again, upload_calls(env.server) - before


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def report_reconcile(ours: list[float], base: list[float], ratio: float) -> int:
    """The reconcile row alone (``--reconcile-only``)."""
    print(f"\nreconcile: mirror {statistics.median(ours):.2f} s, workflow "
          f"{statistics.median(base):.2f} s, median ratio {ratio:.2f}×; pairs (mirror/workflow): "
          + ", ".join(f"{o:.2f}/{b:.2f}" for o, b in zip(ours, base))
          + f"; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    return 0 if ratio <= 1.0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files, one repetition")
    parser.add_argument("--repetitions", type=int, help="reconcile repetitions (default 3)")
    parser.add_argument("--reconcile-only", action="store_true",
                        help="measure only the start-up reconcile (row 2)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.repetitions:
        sizes = Sizes(sizes.latency_files, sizes.reconcile_files, args.repetitions,
                      sizes.restart_files)
    work = Path(tempfile.mkdtemp(prefix="pictofs-bench-mirror-"))
    compileall.compile_dir(str(Path(pictofs.__file__).parent), quiet=1)
    server = start_server(work / "server", work / "server.log")
    try:
        env = Env(work, server)
        if not args.reconcile_only:
            log(f"latency over {sizes.latency_files} files (settle {SETTLE:g}s)...")
            lat = latency(env, sizes.latency_files)
        log(f"reconcile of {sizes.reconcile_files} files x{sizes.repetitions}...")
        ours, base = reconcile(env, sizes.reconcile_files, sizes.repetitions)
        if not args.reconcile_only:
            log(f"restart over {sizes.restart_files} mirrored files...")
            first, again, uploads = restart(env, sizes.restart_files)
    finally:
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)

    ratio = statistics.median(o / b for o, b in zip(ours, base))  # pairs run back to back
    if args.reconcile_only:
        return report_reconcile(ours, base, ratio)

    p50, p95 = percentile(lat, 0.5), percentile(lat, 0.95)
    rows = [
        ("Close-to-visible latency, p50 / p95", f"{sizes.latency_files} files, one per 100 ms",
         f"{p50:.2f} s / {p95:.2f} s", f"p95 ≤ {SETTLE + 1:g} s",
         "PASS" if p95 <= SETTLE + 1 else "MISS"),
        (f"Start-up reconcile of {sizes.reconcile_files} files",
         f"upload_dataset_from_folder: {statistics.median(base):.2f} s",
         f"{statistics.median(ours):.2f} s ({ratio:.2f}×)", "≤ 1.0×",
         "PASS" if ratio <= 1.0 else "MISS"),
        (f"Restart over {sizes.restart_files:,} mirrored files",
         f"first mirror: {first:.1f} s", f"{again:.2f} s, {uploads} upload requests",
         "0 uploads", "PASS" if uploads == 0 else "MISS"),
    ]
    print("\n| Measurement | Baseline | pictofs mirror | Target | |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nlatency min {min(lat):.2f} s, max {max(lat):.2f} s; reconcile runs: mirror "
          f"{', '.join(f'{t:.2f}' for t in ours)} s, workflow "
          f"{', '.join(f'{t:.2f}' for t in base)} s; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}")
    return 0 if all(row[-1] == "PASS" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
