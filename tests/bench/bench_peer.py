"""Peer benchmark: the pictofs mount against ``rclone mount`` of an sftp server, in one run.

Run: ``python tests/bench/bench_peer.py [--quick] [--rows 2,4]`` (needs /dev/fuse,
fusermount3, ``cp``, ``rsync`` and ``rclone``; without ``rclone`` on PATH it prints one
``skipped:`` line and exits 0). ``--rows`` measures only the sections named (1 to 4 below). The name keeps it out of pytest's collection (``test_*.py``): it is a script, not
a test, and opt-in: nothing else runs it.

The peer is what a user could set up instead of pictofs: ``rclone serve sftp`` of a local
folder on 127.0.0.1 (a throwaway user and random password; the client's remote is defined by
``RCLONE_CONFIG_PEER_*`` environment variables, with an empty config file of the run's own),
mounted with ``rclone mount --vfs-cache-mode full --vfs-write-back 2s --transfers N``, N being
pictofs's default ``--transfers`` (16). The pictofs mounts run with their defaults (also
``--write-back 2s``); both keep listings for 5 minutes and use the kernel's 1 s attribute
timeout. pictofs is mounted against its reference
server, started in a temporary folder as the read and write benchmarks start it. The same
bytes are on both servers. Each row is the median of several repetitions, pictofs and rclone
measured one after the other within each repetition:

1. copy, each repetition into a fresh target (a fresh dataset; a fresh empty folder of the
   served tree, made before the sftp server starts) through a fresh mount with an empty cache:
   (a) ``cp -r photos MOUNT/`` of N distinct 100 KB JPEGs, until ``cp`` returns;
   (b) the same ``cp -r`` and then until the data is on the server: pictofs until
   ``pictofs sync MOUNT`` returns; rclone until its remote control (``--rc``) reports no
   upload queued or in progress (``vfs/stats``; it counts a file waiting for its write-back
   delay as queued) and every file is in the served folder with its full size, polled every
   50 ms (the folder is only scanned once the uploads are done). Not the same work:
   ``pictofs sync`` starts at once every upload that only waits for its write-back delay,
   while rclone 1.60 has no command that does (nor one that waits for the uploads), so
   rclone's time includes its 2 s ``--vfs-write-back`` after the last close;
   (c) the first ``rsync -a photos MOUNT/`` into a fresh target, until ``rsync`` returns
   (the uploads are then waited for as in (b), untimed);
   the floor of (a) and (c) is the same command into a fresh folder of the minimal writable
   mfusepy passthrough (``passthrough.py --writable``, as the write benchmark's baseline);
   the same command to local disk is reported under the table;
2. read of N × 2 MB files: (a) cold, ``cat big/*`` (the folder listed, every file read in
   128 KiB reads) on a fresh mount with an empty cache; (b) repeat, the same on the same
   mount, read twice before (pictofs keeps the kernel page cache from the second open of a
   path on). Floors: the minimal mfusepy passthrough (``passthrough.py``) of the same files
   on local disk, (a) a fresh passthrough mount per run, (b) ``--keep-cache``, read twice
   before. The servers' own files are in the page cache in every run, as the passthrough's;
3. ``ls -l`` of a folder of M files: (a) cold, on a fresh mount; (b) warm, on the same mount
   1.2 s later (past the kernel's attribute timeout, so the kernel asks the daemon again and
   gets the answers from its listing cache). Floor: the passthrough of a local folder of the
   same M files, measured the same way. pictofs lists images registered on its server (as
   ``bench_read.py`` seeds them); the sftp server lists the same files in its folder. Each
   server keeps the caches it keeps on its own (the reference server its SQLite database in
   the page cache, ``rclone serve`` its directory cache);
4. cold reads of small files: (a) ``cat small/*`` of N distinct 100 KB JPEGs (1,000; 200 with
   ``--quick``), the folder listed and every file read in 128 KiB reads, on a fresh mount
   with an empty cache (floor: the passthrough of the same local files, a fresh mount);
   (b) the mount daemon's CPU time (user + system of all its threads, from
   ``/proc/PID/stat`` before and after the ``cat``; the daemon only, not the servers) per
   file. The target (issue 17): pictofs's at most 1.4 ms per file and at most rclone's in
   the same run; the table says whether the medians meet it. With ``BENCH_PEER_PROFILE`` set
   to a ``py-spy`` binary, each pictofs daemon of row 4 is sampled during its ``cat``
   (``py-spy record --native --format raw`` plus ``BENCH_PEER_PROFILE_ARGS``, e.g. ``--gil
   --rate 400``) into ``profileN.txt`` in ``BENCH_PEER_PROFILE_DIR`` (default: the current
   folder); the CPU figures of such a run include the sampling's cost.

Every copy is checked untimed: every name with its size on the server (the dataset's folder;
the served folder), and the bytes of the read rows once per mount. The table gives pictofs,
rclone, the ratio pictofs / rclone (lower is better for pictofs) and the floor; under it
every repetition, the machine, its load, the revision measured and rclone's version. The
report is printed as plain text and again as Markdown for the docs. The server, mount,
passthrough and teardown machinery is the read and write benchmarks'
(``bench_read.py``, ``bench_write.py``). Everything (mounts, rclone processes, the server,
temporary folders) is cleaned up, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# bench_write and bench_read (beside this script) put tests/ on sys.path
from bench_read import KERNEL_ATTR_TIMEOUT, cat, exit_on_sigterm, force_unmount, grid, \
    isolate_environment, log, ls_l, run_and_report, timed, wait_for_mount
from bench_write import FOLDER, IMAGE_SIZE, WriteBench, cpu_seconds, duration, load_average, \
    machine, revision, run, rsync, show_mount_logs
from imagegen import sized_jpeg
from seed import seed_images

from pictofs.config import OPTIONS
from pictofs.fs.fuse_session import mount_device

SKIP = "skipped: rclone is not installed (apt-get install rclone gives 1.60)"
USER = "bench"
REMOTE = "peer"  # the name of the sftp remote in RCLONE_CONFIG_PEER_*
WRITE_BACK = "2s"
TRANSFERS = next(o.default for o in OPTIONS if o.name == "transfers")  # pictofs's default
DIR_CACHE_TIME = "5m"  # as bench_read's pictofs mounts
POLL = 0.05  # seconds between two looks at rclone's upload queue
UPLOAD_TIMEOUT = 900.0
SECTIONS = ("1", "2", "3", "4")  # --rows: the copies, reads, listings, small reads
CPU_TARGET = 1.4e-3  # seconds of the daemon's CPU per small file read cold (issue 17)


@dataclass(frozen=True)
class Sizes:
    repetitions: int  # of the copies (each uploads every file again)
    cheap_repetitions: int  # of the reads and listings
    files: int  # 100 KB JPEGs copied
    images: int  # 2 MB files read
    listing: int  # files in the listed folder
    small: int  # 100 KB JPEGs read cold (row 4)


FULL = Sizes(repetitions=3, cheap_repetitions=5, files=1000, images=20, listing=10_000,
             small=1000)
QUICK = Sizes(repetitions=2, cheap_repetitions=3, files=200, images=5, listing=2_000, small=200)


@dataclass
class PeerRow:
    """One line of the table: pictofs and rclone, and the floor (``floor_what`` "" if none)."""

    key: str
    name: str
    floor_what: str = ""
    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    cpu_target: float | None = None  # a CPU row: seconds per file, and the most it may be

    def show(self, value: float) -> str:
        return f"{value * 1000:.2f} ms" if self.cpu_target is not None else duration(value)

    def cells(self) -> list[str]:
        def median(times: list[float]) -> str:
            return self.show(statistics.median(times)) if times else "—"

        ratio = (f"{statistics.median(self.ours) / statistics.median(self.peer):.2f}×"
                 if self.ours and self.peer else "—")
        if self.cpu_target is not None:
            return [self.key, self.name, median(self.ours), median(self.peer), ratio,
                    f"target ≤ {self.show(self.cpu_target)} and ≤ rclone", self.verdict()]
        return [self.key, self.name, median(self.ours), median(self.peer), ratio,
                self.floor_what or "—", median(self.floor) if self.floor_what else "—"]

    def verdict(self) -> str:
        if not self.ours or not self.peer or self.cpu_target is None:
            return "—"
        ours = statistics.median(self.ours)
        met = ours <= self.cpu_target and ours <= statistics.median(self.peer)
        return "met" if met else "missed"

    def spread(self) -> str:
        parts = [f"pictofs {', '.join(self.show(t) for t in self.ours)}",
                 f"rclone {', '.join(self.show(t) for t in self.peer)}"]
        if self.floor:
            parts.append(f"floor {', '.join(self.show(t) for t in self.floor)}")
        return "; ".join(parts)


def table(rows: list[PeerRow], markdown: bool) -> str:
    head = ["#", "Measurement", "pictofs", "rclone", "pictofs / rclone", "Floor", "Floor time"]
    return grid(head, [row.cells() for row in rows], markdown)


def rclone_version() -> str:
    """The first line of ``rclone version``, e.g. ``rclone v1.60.1-DEV``."""
    out = subprocess.run(["rclone", "version"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL).stdout
    return out.splitlines()[0].strip() if out.strip() else "unknown"


def wait_for_line(log_file: Path, marker: str, process: subprocess.Popen[bytes],
                  timeout: float = 30) -> str:
    """The rest of the first line of ``log_file`` after ``marker`` (an address rclone logs
    once it listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        for line in text.splitlines():
            if marker in line:
                return line.split(marker, 1)[1].strip()
        if process.poll() is not None:
            raise RuntimeError(f"rclone exited {process.returncode}: {text.strip()[-1000:]}")
        time.sleep(0.02)
    raise RuntimeError(f"rclone did not log {marker!r} in {timeout}s (see {log_file.name})")


def stop_process(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; never raises."""
    if process.poll() is not None:
        return
    try:
        process.terminate()
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except OSError as exc:
        log(f"cleanup: rclone process {process.pid}: {exc}")


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends: a mount being started is registered for
    the teardown before the interruption takes effect (the handlers are this process's own;
    children still get the default ones)."""
    pending: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)  # unless ignored
    previous = {signum: signal.signal(signum, lambda n, _f: pending.append(n))
                for signum in watched if signal.getsignal(signum) != signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending:
        if pending[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + pending[0])


def processes_naming(folder: Path) -> list[int]:
    """Other processes whose command line names a path in ``folder`` (this run's private
    temporary folder, so: processes this run started, such as a mount daemon whose start was
    interrupted before it could be registered)."""
    needle = f"{folder}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@dataclass
class RcloneMount:
    mountpoint: Path
    process: subprocess.Popen[bytes]
    rc_url: str  # http://127.0.0.1:PORT/


# --------------------------------------------------------------------------- the run


class PeerBench(WriteBench):
    """The temporary world of one run: the reference server and pictofs mounts (as for the
    read and write benchmarks), the sftp server and rclone mounts, and their teardown."""

    def __init__(self, root: Path, sizes: Sizes) -> None:
        super().__init__(root, sizes)  # type: ignore[arg-type]  # the fields both use
        self.sizes: Sizes = sizes  # type: ignore[assignment]
        self.served = root / "served"  # the sftp server's folder
        self.serve: subprocess.Popen[bytes] | None = None
        self.rclone_mounts: list[RcloneMount] = []
        self.peer_env: dict[str, str] = {}
        self.peer_rows: list[PeerRow] = []
        self.small_data: dict[str, bytes] = {}  # row 4: name → bytes, in /small on both
        self.local_small = root  # set by seed_small

    # -- setup ------------------------------------------------------------------------------

    def seed_small(self) -> None:
        """Row 4's files: ``small`` distinct 100 KB JPEGs in the dataset's ``/small``."""
        assert self.client is not None
        n = self.sizes.small
        log(f"seeding {n:,} × {IMAGE_SIZE // 1000} KB JPEGs into /small")
        made = seed_images(self.client, self.dataset_id, "/small",
                           [f"small{i:05d}.jpg" for i in range(n)],
                           data_for=lambda name: sized_jpeg(IMAGE_SIZE, 50_000 + int(name[5:10])))
        self.small_data = {name: data for name, (_image, data) in made.items()}
        self.local_small = self.fresh_dir("local-small")
        for name, data in self.small_data.items():
            (self.local_small / name).write_bytes(data)

    def seed_served(self) -> None:
        """The same files for the sftp server as for the reference server (``seed``,
        ``seed_small`` and ``make_source`` first), and an empty target folder for every copy."""
        log("copying the read and listing files into the served folder")
        self.served.mkdir()
        shutil.copytree(self.local_big, self.served / "big")
        shutil.copytree(self.local_many, self.served / "many")
        if self.small_data:
            shutil.copytree(self.local_small, self.served / "small")
        for rep in range(self.reps):
            (self.served / f"cp{rep}").mkdir()
            (self.served / f"rsync{rep}").mkdir()

    def start_serve(self) -> None:
        log("starting rclone serve sftp on 127.0.0.1")
        password = secrets.token_urlsafe(18)
        log_file = self.root / "rclone-serve.log"
        config = self.root / "rclone.conf"  # never written: only the variables below count
        base = dict(os.environ, RCLONE_CONFIG=str(config))
        self.serve = subprocess.Popen(  # the password as --pass, from the environment
            ["rclone", "serve", "sftp", str(self.served), "--addr", "127.0.0.1:0", "--user",
             USER, "--log-file", str(log_file)],
            env=dict(base, RCLONE_PASS=password), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        address = wait_for_line(log_file, "SFTP server listening on", self.serve)
        port = address.rsplit(":", 1)[1]
        obscured = subprocess.run(["rclone", "obscure", "-"], input=password, text=True,
                                  capture_output=True, check=True, timeout=60).stdout.strip()
        prefix = f"RCLONE_CONFIG_{REMOTE.upper()}_"
        self.peer_env = dict(base, **{prefix + "TYPE": "sftp", prefix + "HOST": "127.0.0.1",
                                      prefix + "PORT": port, prefix + "USER": USER,
                                      prefix + "PASS": obscured})

    # -- rclone mounts ----------------------------------------------------------------------

    def mount_rclone(self, path: str = "") -> RcloneMount:
        """``rclone mount peer:PATH`` on a fresh mountpoint with a fresh, empty cache."""
        mountpoint = self.fresh_dir("rclone-mnt")
        cache = self.fresh_dir("rclone-cache")
        log_file = self.root / f"rclone-mount{self.counter}.log"
        self.logs.append(log_file)
        process = subprocess.Popen(
            ["rclone", "mount", f"{REMOTE}:{path}", str(mountpoint), "--vfs-cache-mode", "full",
             "--vfs-write-back", WRITE_BACK, "--transfers", TRANSFERS, "--cache-dir",
             str(cache), "--dir-cache-time", DIR_CACHE_TIME, "--rc", "--rc-addr",
             "127.0.0.1:0", "--rc-no-auth", "--log-file", str(log_file)],
            env=self.peer_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT)
        mount = RcloneMount(mountpoint, process, "")
        self.rclone_mounts.append(mount)
        mount.rc_url = wait_for_line(log_file, "Serving remote control on", process)
        wait_for_mount(mountpoint, process, what="rclone mount")
        return mount

    def umount_rclone(self, mount: RcloneMount) -> None:
        self.rclone_mounts.remove(mount)
        if mount_device(str(mount.mountpoint)) is not None:
            result = subprocess.run(["fusermount3", "-u", str(mount.mountpoint)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                log(f"fusermount3 -u {mount.mountpoint} failed ({result.stderr.strip()}); "
                    "forcing it")
                force_unmount(mount.mountpoint)
        try:
            mount.process.wait(10)  # rclone ends on its own once unmounted
        except subprocess.TimeoutExpired:
            stop_process(mount.process)

    def vfs_stats(self, mount: RcloneMount) -> dict[str, int]:
        """rclone's ``vfs/stats``: its disk cache's counters."""
        request = urllib.request.Request(mount.rc_url + "vfs/stats", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["diskCache"]

    def served_complete(self, folder: Path) -> bool:
        """Every source file is in ``folder`` of the served tree with its size."""
        try:
            got = {entry.name: entry.stat().st_size for entry in os.scandir(folder)}
        except FileNotFoundError:
            return False
        return got == self.expected

    def wait_uploaded(self, mount: RcloneMount, folder: Path) -> None:
        """Until rclone has no upload queued or running and ``folder`` holds every file."""
        deadline = time.monotonic() + UPLOAD_TIMEOUT
        while time.monotonic() < deadline:
            stats = self.vfs_stats(mount)
            if stats["uploadsQueued"] == 0 and stats["uploadsInProgress"] == 0 \
                    and self.served_complete(folder):
                return
            if stats.get("erroredFiles"):
                raise RuntimeError(f"rclone reports {stats['erroredFiles']} failed uploads")
            time.sleep(POLL)
        raise RuntimeError(f"the rclone uploads into {folder} did not end in {UPLOAD_TIMEOUT}s")

    def mount(self, cache_dir: Path) -> Path:
        with signals_deferred():
            return super().mount(cache_dir)

    def mount_dataset(self, dataset: str, write_back: str = "2s", *,
                      base_url: str | None = None, cache: Path | None = None) -> Path:
        with signals_deferred():
            return super().mount_dataset(dataset, write_back, base_url=base_url, cache=cache)

    def close(self) -> None:
        """Tear everything down; never raises."""
        for mount in list(self.rclone_mounts):
            try:
                self.umount_rclone(mount)
            except Exception as exc:  # keep cleaning up
                log(f"cleanup: {mount.mountpoint}: {exc}")
        if self.serve is not None:
            stop_process(self.serve)
        super().close()
        try:
            self.stop_strays()
        except Exception as exc:
            log(f"cleanup: stray processes: {exc}")

    def stop_strays(self) -> None:
        """A daemon still running from this run (a terminal's Ctrl-C reaches a ``pictofs
        mount`` launcher too, and its daemon goes on starting): SIGTERM, then SIGKILL, then
        whatever is still mounted below the temporary folder is unmounted."""
        strays = processes_naming(self.root)
        for pid in strays:
            log(f"cleanup: stopping process {pid}, started by this run")
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 15
        while strays and time.monotonic() < deadline:
            strays = [pid for pid in strays if Path(f"/proc/{pid}").exists()]
            time.sleep(0.1)
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for path in self.root.iterdir():
            if mount_device(str(path)) is not None:
                force_unmount(path)

    # -- 1. copies --------------------------------------------------------------------------

    def copies(self) -> None:
        n = self.files
        alone = PeerRow("1a", f"`cp -r` of {n:,} × 100 KB JPEGs, until `cp` returns",
                        "passthrough `--writable`")
        landed = PeerRow("1b", f"`cp -r` of {n:,} × 100 KB, until the data is on the server")
        first = PeerRow("1c", f"first `rsync -a` of {n:,} × 100 KB into a fresh target",
                        "passthrough `--writable`")
        local_cp: list[float] = []
        local_rsync: list[float] = []
        passthrough = self.mount_passthrough(self.fresh_dir("passthrough-data"), "--writable")
        for rep in range(self.reps):
            log(f"copy {rep + 1}/{self.reps}: pictofs cp -r + sync")
            dataset = self.new_dataset("cp")
            mountpoint = self.mount_dataset(dataset, WRITE_BACK)
            start = time.perf_counter()
            run("cp", "-r", self.source, f"{mountpoint}/")
            alone.ours.append(time.perf_counter() - start)
            self.sync(mountpoint)
            landed.ours.append(time.perf_counter() - start)
            self.umount(mountpoint)
            self.check_landed(dataset)

            log(f"copy {rep + 1}/{self.reps}: rclone cp -r + uploads")
            mount = self.mount_rclone(f"cp{rep}")
            start = time.perf_counter()
            run("cp", "-r", self.source, f"{mount.mountpoint}/")
            alone.peer.append(time.perf_counter() - start)
            self.wait_uploaded(mount, self.served / f"cp{rep}" / FOLDER)
            landed.peer.append(time.perf_counter() - start)
            self.umount_rclone(mount)

            log(f"copy {rep + 1}/{self.reps}: cp -r through the passthrough, to local disk")
            alone.floor.append(self.passthrough_copy(passthrough, "cp"))
            local = self.fresh_dir("local-copy")
            local_cp.append(timed(lambda: run("cp", "-r", self.source, f"{local}/")))
            shutil.rmtree(local)

            log(f"copy {rep + 1}/{self.reps}: first rsync -a, pictofs, rclone, passthrough, "
                "local")
            dataset = self.new_dataset("rsync")
            mountpoint = self.mount_dataset(dataset, WRITE_BACK)
            first.ours.append(timed(lambda: self.rsync_all(mountpoint)))
            self.sync(mountpoint)
            self.umount(mountpoint)
            self.check_landed(dataset)

            mount = self.mount_rclone(f"rsync{rep}")
            first.peer.append(timed(lambda: self.rsync_all(mount.mountpoint)))
            self.wait_uploaded(mount, self.served / f"rsync{rep}" / FOLDER)
            self.umount_rclone(mount)

            first.floor.append(self.passthrough_copy(passthrough, "rsync"))
            local = self.fresh_dir("local-rsync")
            local_rsync.append(timed(lambda: self.rsync_all(local)))
            shutil.rmtree(local)
        self.stop_passthrough()
        self.peer_rows += [alone, landed, first]
        self.notes.append("Local disk, no FUSE (medians): `cp -r` "
                          f"{duration(statistics.median(local_cp))}, first `rsync -a` "
                          f"{duration(statistics.median(local_rsync))}.")

    def rsync_all(self, target: Path) -> None:
        transferred = rsync(self.source, target)
        if transferred != self.files:
            raise RuntimeError(f"rsync -a into {target} transferred {transferred} files, "
                               f"expected {self.files}")

    # -- 2. reads ---------------------------------------------------------------------------

    def reads(self) -> None:
        n, reps = self.sizes.images, self.sizes.cheap_repetitions
        names = sorted(self.big_data)
        expected = sum(len(data) for data in self.big_data.values())
        cold = PeerRow("2a", f"cold read of {n} × 2 MB (`cat big/*`, fresh mount, empty cache)",
                       "passthrough, fresh mount")
        repeat = PeerRow("2b", f"repeat read of {n} × 2 MB (same mount, read twice before)",
                         "passthrough `--keep-cache`")

        def read_folder(folder: Path) -> None:
            got = cat([folder / name for name in sorted(os.listdir(folder))])
            if got != expected:
                raise RuntimeError(f"read {got} bytes in {folder}, expected {expected}")

        def check_bytes(folder: Path) -> None:  # untimed
            for name in names:
                if (folder / name).read_bytes() != self.big_data[name]:
                    raise RuntimeError(f"{folder / name} differs from what was seeded")

        pictofs_mount: Path | None = None
        rclone_mount: RcloneMount | None = None
        for rep in range(reps):
            last = rep + 1 == reps
            log(f"cold read {rep + 1}/{reps}: pictofs, rclone, passthrough")
            mountpoint = self.mount(self.fresh_dir("cache"))
            cold.ours.append(timed(lambda: read_folder(mountpoint / "big")))
            check_bytes(mountpoint / "big")
            if last:
                pictofs_mount = mountpoint
            else:
                self.umount(mountpoint)

            mount = self.mount_rclone()
            cold.peer.append(timed(lambda: read_folder(mount.mountpoint / "big")))
            check_bytes(mount.mountpoint / "big")
            if last:
                rclone_mount = mount
            else:
                self.umount_rclone(mount)

            passthrough = self.mount_passthrough(self.local_big)
            cold.floor.append(timed(lambda: read_folder(passthrough)))
            self.stop_passthrough()

        assert pictofs_mount is not None and rclone_mount is not None
        passthrough = self.mount_passthrough(self.local_big, "--keep-cache")
        read_folder(passthrough)
        read_folder(passthrough)
        pictofs_big, rclone_big = pictofs_mount / "big", rclone_mount.mountpoint / "big"
        for rep in range(reps):
            log(f"repeat read {rep + 1}/{reps}: pictofs, rclone, passthrough")
            repeat.ours.append(timed(lambda: read_folder(pictofs_big)))
            repeat.peer.append(timed(lambda: read_folder(rclone_big)))
            repeat.floor.append(timed(lambda: read_folder(passthrough)))
        self.stop_passthrough()
        self.umount(pictofs_mount)
        self.umount_rclone(rclone_mount)
        self.peer_rows += [cold, repeat]

    # -- 3. listings ------------------------------------------------------------------------

    def listings(self) -> None:  # in place of bench_read's rows 3 and 4
        count, reps = self.sizes.listing, self.sizes.cheap_repetitions
        cold = PeerRow("3a", f"cold `ls -l` of {count:,} files (fresh mount)",
                       "passthrough, fresh mount")
        warm = PeerRow("3b", f"warm `ls -l` of {count:,} files (same mount, 1.2 s later)",
                       "passthrough, same mount")
        cache = self.fresh_dir("cache")

        def cold_and_warm(row_times: tuple[list[float], list[float]], folder: Path) -> None:
            row_times[0].append(timed(lambda: ls_l(folder, count)))
            time.sleep(KERNEL_ATTR_TIMEOUT + 0.2)  # the kernel forgets; the daemon does not
            row_times[1].append(timed(lambda: ls_l(folder, count)))

        for rep in range(reps):
            log(f"cold and warm ls -l {rep + 1}/{reps}: pictofs, rclone, passthrough")
            mountpoint = self.mount(cache)
            cold_and_warm((cold.ours, warm.ours), mountpoint / "many")
            self.umount(mountpoint)

            mount = self.mount_rclone()
            cold_and_warm((cold.peer, warm.peer), mount.mountpoint / "many")
            self.umount_rclone(mount)

            passthrough = self.mount_passthrough(self.local_many)
            cold_and_warm((cold.floor, warm.floor), passthrough)
            self.stop_passthrough()
        self.peer_rows += [cold, warm]


    # -- 4. cold reads of small files --------------------------------------------------------

    def small_reads(self) -> None:
        """Row 4: a cold ``cat small/*`` of N × 100 KB on a fresh mount with an empty cache;
        the wall time, and the mount daemon's CPU time (user + system, all its threads, not
        the server's) per file."""
        n, reps = self.sizes.small, self.sizes.cheap_repetitions
        expected = sum(len(data) for data in self.small_data.values())
        wall = PeerRow("4a", f"cold read of {n:,} × 100 KB (`cat small/*`, fresh mount, "
                             "empty cache)", "passthrough, fresh mount")
        cpu = PeerRow("4b", "4a: the mount daemon's CPU time per file (user + system)",
                      cpu_target=CPU_TARGET)
        names = sorted(self.small_data)

        def read_folder(folder: Path) -> None:
            got = cat([folder / name for name in sorted(os.listdir(folder))])
            if got != expected:
                raise RuntimeError(f"read {got} bytes in {folder}, expected {expected}")

        def measure(folder: Path, pid: int, walls: list[float], cpus: list[float]) -> None:
            before = cpu_seconds(pid)
            walls.append(timed(lambda: read_folder(folder)))
            cpus.append((cpu_seconds(pid) - before) / n)
            for name in names[:: max(1, n // 20)]:  # untimed: a sample of the bytes is right
                if (folder / name).read_bytes() != self.small_data[name]:
                    raise RuntimeError(f"{folder / name} differs from what was seeded")

        for rep in range(reps):
            log(f"cold read of small files {rep + 1}/{reps}: pictofs, rclone, passthrough")
            mountpoint = self.mount(self.fresh_dir("cache"))
            pid = self.daemon_pid(mountpoint)
            if os.environ.get("BENCH_PEER_PROFILE"):  # a py-spy record of the daemon
                profile = subprocess.Popen(
                    [os.environ["BENCH_PEER_PROFILE"], "record", "--pid", str(pid), "--native",
                     "--format", "raw", "-o", str(self.root / f"profile{rep}.txt"),
                     *os.environ.get("BENCH_PEER_PROFILE_ARGS", "").split()],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            measure(mountpoint / "small", pid, wall.ours, cpu.ours)
            if os.environ.get("BENCH_PEER_PROFILE"):
                profile.send_signal(signal.SIGINT)
                profile.wait(60)
                shutil.copy(self.root / f"profile{rep}.txt",
                            Path(os.environ.get("BENCH_PEER_PROFILE_DIR", ".")) /
                            f"profile{rep}.txt")
            self.umount(mountpoint)

            mount = self.mount_rclone()
            measure(mount.mountpoint / "small", mount.process.pid, wall.peer, cpu.peer)
            self.umount_rclone(mount)

            passthrough = self.mount_passthrough(self.local_small)
            wall.floor.append(timed(lambda: read_folder(passthrough)))
            self.stop_passthrough()
        self.peer_rows += [wall, cpu]


# --------------------------------------------------------------------------- the report


def report(bench: PeerBench, quick: bool, markdown: bool) -> str:
    bullet = "- " if markdown else "  "
    sizes = bench.sizes
    lines = [f"Medians of {sizes.repetitions} repetitions for the copies (each into a fresh "
             f"target), of {sizes.cheap_repetitions} for the reads and listings"
             f"{' (--quick: fewer files and repetitions)' if quick else ''}; "
             "pictofs / rclone: lower is better for pictofs.", "",
             table(bench.peer_rows, markdown), "", "Every repetition:"]
    lines += [f"{bullet}{row.key}: {row.spread()}" for row in bench.peer_rows]
    if bench.notes:
        lines.append("")
        lines += [f"{bullet}{note}" for note in bench.notes]
    return "\n".join(lines)


def parse_sections(text: str) -> frozenset[str]:
    """``--rows 2,4``: the sections to measure, each one of ``SECTIONS``."""
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = chosen - set(SECTIONS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"sections are {', '.join(SECTIONS)}; not {', '.join(sorted(unknown)) or text!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.files} files copied, {QUICK.images} read, "
                             f"{QUICK.listing:,} listed; {QUICK.repetitions} and "
                             f"{QUICK.cheap_repetitions} repetitions (default: {FULL.files:,}, "
                             f"{FULL.images}, {FULL.listing:,}; {FULL.repetitions} and "
                             f"{FULL.cheap_repetitions})")
    parser.add_argument("--rows", type=parse_sections, default=None,
                        help="measure only these sections, e.g. 4 or 2,4 (1 copies, 2 reads, "
                             "3 listings, 4 cold reads of small files; default: all)")
    args = parser.parse_args(argv)
    if shutil.which("rclone") is None:
        print(SKIP)
        return 0
    sizes = QUICK if args.quick else FULL

    exit_on_sigterm()
    bench = PeerBench(Path(tempfile.mkdtemp(prefix="pictofs-bench-peer-")), sizes)
    bench.rows = args.rows
    load_before, measured, version = load_average(), revision(), rclone_version()

    def measure() -> None:
        isolate_environment(bench.root)
        bench.start()
        bench.seed(listing=bench.wanted("3"))
        if bench.wanted("4"):
            bench.seed_small()
        if bench.wanted("1"):
            bench.make_source()
        bench.seed_served()
        bench.start_serve()
        if bench.wanted("1"):
            bench.copies()
        if bench.wanted("2"):
            bench.reads()
        if bench.wanted("3"):
            bench.listings()
        if bench.wanted("4"):
            bench.small_reads()
        if bench.wanted("1"):
            bench.notes.append(f"1b: `pictofs sync` starts the uploads still waiting for "
                               f"their write-back at once; rclone's time includes its "
                               f"{WRITE_BACK} `--vfs-write-back` after the last close (no "
                               "rclone command cuts it).")
        bench.notes.append(f"Machine: {machine()}; load average (1 min) at start / end: "
                           f"{load_before} / {load_average()}. Revision: {measured}. "
                           f"Peer: {version} (`rclone serve sftp` on 127.0.0.1, "
                           f"`rclone mount --vfs-cache-mode full --vfs-write-back {WRITE_BACK} "
                           f"--transfers {TRANSFERS}`).")

    return run_and_report(bench, measure,
                          lambda markdown: report(bench, args.quick, markdown=markdown),
                          on_failure=lambda: show_mount_logs(bench))  # before the folder goes


if __name__ == "__main__":
    sys.exit(main())
