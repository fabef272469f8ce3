"""Load: 8 writers and 8 readers on one mount for a bounded time (filesystem §4, §5, §6).

Each writer works in its own folder ``wN`` (and its subfolder ``wN/sub``): it creates and
writes new images (1-3 writes each), overwrites some, renames some (a new name in the same
folder: a retarget of a staged file or an upload under the new name; the same name into the
other folder: a server-side move), and deletes some, keeping what it expects in a dict. Each
reader reads seeded images (bytes checked) and re-lists the folders (``readdir`` + ``stat``
of every entry; a name a writer renamed or deleted meanwhile may vanish between the two).

Asserted: no operation fails (other than that ``ENOENT`` race of the readers); no deadlock: a
watchdog timer aborts the FUSE connection (``/sys/fs/fuse/connections/N/abort``; where fusectl
is not mounted it kills the daemon, which unblocks every caller just as well) and fails the
test if the load is not over ``WATCHDOG_MARGIN`` seconds after its bound (and a second one if
reading every written file back takes over ``WATCHDOG_MARGIN`` + 0.1 s a file), and
``pictofs sync --timeout 240s`` must drain the queue; the daemon's peak RSS (``VmHWM``, and
``VmRSS`` sampled every 0.2 s) stays under 200 MB; at the end the mount shows every writer's
files with their sizes (and the bytes of a sample of 400), and after ``pictofs sync`` the
service holds exactly them with their bytes (nothing lost, no duplicate, no left-over) plus
the seeded images.

``PICTOFS_LONG=1`` runs for 5 minutes instead of 20 s. See docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagegen import jpeg_bytes, png_bytes
from mountkit import pictofs_cmd, service_bytes
from pictofs.fs.fuse_session import abort_connection
from seed import seed_images

pytestmark = pytest.mark.fuse

LONG = os.environ.get("PICTOFS_LONG", "") not in ("", "0")
DURATION = 300.0 if LONG else 20.0  # seconds of load
WATCHDOG_MARGIN = 60.0  # the run may overrun its bound by this much before it is aborted
WRITERS = READERS = 8
SEEDED = 40
RSS_LIMIT = 200 * 1024 * 1024
SEED = 7
SAMPLE = 400  # files whose bytes are read back through the mount (all of them on the service)


@dataclass
class Writer:
    number: int
    root: Path
    deadline: float
    rng: random.Random = field(init=False)
    files: dict[str, bytes] = field(default_factory=dict)  # path relative to root → bytes
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    made: int = 0
    doing: str = ""  # the step under way, for the error

    def __post_init__(self) -> None:
        self.rng = random.Random(SEED * 1000 + self.number)

    @property
    def folder(self) -> str:
        return f"w{self.number}"

    def blob(self, name: str) -> bytes:
        unique = self.number * 1_000_000 + self.made
        return png_bytes(unique) if name.endswith(".png") else jpeg_bytes(unique)

    def write(self, rel: str, data: bytes, flags: int) -> None:
        fd = os.open(self.root / rel, flags, 0o644)
        try:
            pieces = self.rng.randint(1, 3)
            size = -(-len(data) // pieces)
            for start in range(0, len(data), size):
                os.write(fd, data[start:start + size])
        finally:
            os.close(fd)

    def new_name(self, sub: bool) -> str:
        self.made += 1
        ext = self.rng.choice([".png", ".jpg"])
        return f"{self.folder}/{'sub/' if sub else ''}f{self.made:05d}{ext}"

    def run(self) -> None:
        try:
            os.mkdir(self.root / self.folder)
            os.mkdir(self.root / self.folder / "sub")
            while time.monotonic() < self.deadline:
                self.one_step()
        except Exception as exc:  # reported by the test
            self.errors.append(f"writer {self.number}, {self.doing}: {exc!r}")

    def one_step(self) -> None:
        self.doing = "choosing"
        roll = self.rng.random()
        mine = sorted(self.files)
        if roll < 0.55 or len(mine) < 4:
            op = "create"
            rel = self.new_name(sub=self.rng.random() < 0.3)
            data = self.blob(rel)
            self.doing = f"{op} {rel}"
            self.write(rel, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            self.files[rel] = data
        elif roll < 0.70:
            op = "overwrite"
            rel = self.rng.choice(mine)
            self.made += 1
            data = self.blob(rel)
            self.doing = f"{op} {rel}"
            self.write(rel, data, os.O_WRONLY | os.O_TRUNC)
            self.files[rel] = data
        elif roll < 0.80:
            op = "rename"
            rel = self.rng.choice(mine)
            folder, _, name = rel.rpartition("/")
            self.made += 1
            new = f"{folder}/r{self.made:05d}{os.path.splitext(name)[1]}"
            self.doing = f"{op} {rel} to {new}"
            os.rename(self.root / rel, self.root / new)
            self.files[new] = self.files.pop(rel)
        elif roll < 0.88:
            op = "move"
            rel = self.rng.choice(mine)
            folder, _, name = rel.rpartition("/")
            other = self.folder if folder.endswith("/sub") else f"{self.folder}/sub"
            self.doing = f"{op} {rel} to {other}/"
            os.rename(self.root / rel, self.root / other / name)
            self.files[f"{other}/{name}"] = self.files.pop(rel)
        else:
            op = "delete"
            rel = self.rng.choice(mine)
            self.doing = f"{op} {rel}"
            os.unlink(self.root / rel)
            del self.files[rel]
        self.counts[op] = self.counts.get(op, 0) + 1


@dataclass
class Reader:
    number: int
    root: Path
    deadline: float
    seeded: dict[str, bytes]
    rng: random.Random = field(init=False)
    reads: int = 0
    listings: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(SEED * 2000 + self.number)

    def run(self) -> None:
        names = sorted(self.seeded)
        try:
            while time.monotonic() < self.deadline:
                if self.rng.random() < 0.7:
                    name = self.rng.choice(names)
                    data = (self.root / "seed" / name).read_bytes()
                    if data != self.seeded[name]:
                        self.errors.append(f"reader {self.number}: seed/{name} bytes differ")
                    self.reads += 1
                    self.bytes_read += len(data)
                else:
                    self.relist()
        except Exception as exc:
            self.errors.append(f"reader {self.number}: {exc!r}")

    def relist(self) -> None:
        folder = self.rng.choice(["", "seed", *[f"w{n}" for n in range(WRITERS)],
                                  *[f"w{n}/sub" for n in range(WRITERS)]])
        try:
            entries = os.listdir(self.root / folder)
        except FileNotFoundError:
            return  # a writer has not made its folder yet
        for entry in entries:
            try:
                os.stat(self.root / folder / entry)
            except FileNotFoundError:
                pass  # renamed or deleted by its writer since the listing
        self.listings += 1


class RssSampler:
    """VmRSS of the daemon every 0.2 s; VmHWM (the kernel's peak) at the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="rss", daemon=True)

    def field(self, name: str) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no {name} for pid {self.pid}")

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.samples.append(self.field("VmRSS"))
            except (OSError, AssertionError):
                return


@pytest.mark.timeout(DURATION + 1200)  # the watchdogs, the sync bound and the checks
def test_8_writers_and_8_readers_on_one_mount(client, dataset, mount, tmp_path):
    seeded = {name: data for name, (_image, data) in seed_images(
        client, dataset.id, "/seed", [f"s{i:03d}.png" for i in range(SEEDED)]).items()}
    m = mount(dataset.name, "--write-back", "0.5s")
    pid = int(m.status()["pid"])
    sampler = RssSampler(pid)
    sampler.thread.start()

    started = time.monotonic()
    deadline = started + DURATION
    writers = [Writer(n, m.path, deadline) for n in range(WRITERS)]
    readers = [Reader(n, m.path, deadline, seeded) for n in range(READERS)]
    threads = [threading.Thread(target=w.run, name=f"writer-{w.number}") for w in writers] + \
        [threading.Thread(target=r.run, name=f"reader-{r.number}") for r in readers]

    fired: list[str] = []  # the phase the watchdog ended

    def arm(seconds: float, phase: str) -> threading.Timer:
        def watchdog() -> None:
            fired.append(f"{phase} was not over after {seconds:.0f} s")
            # every thread blocked in the mount then fails (ECONNABORTED); where fusectl is
            # not mounted (/sys/fs/fuse/connections empty, some containers) a dead daemon does
            if not abort_connection(str(m.path)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # the daemon is gone already
                    pass

        timer = threading.Timer(seconds, watchdog)
        timer.start()
        return timer

    timer = arm(DURATION + WATCHDOG_MARGIN, f"the {DURATION:.0f} s load")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION + WATCHDOG_MARGIN + 30)
    timer.cancel()
    elapsed = time.monotonic() - started
    errors = [e for w in writers for e in w.errors] + [e for r in readers for e in r.errors]
    assert not errors or fired, "\n".join(errors[:20])

    # the mount shows every writer's files with their sizes, and the bytes of a sample of
    # them (each is downloaded again; the service check below compares all of them), under
    # a watchdog too (allow 0.1 s a file)
    expected = {rel: data for w in writers for rel, data in w.files.items()}
    sample = set(random.Random(SEED).sample(sorted(expected), min(len(expected), SAMPLE)))
    sizes, shown = {}, {}
    if not fired:
        timer = arm(WATCHDOG_MARGIN + 0.1 * len(expected), "reading the files back")
        try:
            for w in writers:
                for folder in (w.folder, f"{w.folder}/sub"):
                    for entry in os.scandir(m.path / folder):
                        rel = f"{folder}/{entry.name}"
                        if entry.name != "sub":
                            sizes[rel] = entry.stat().st_size
                        if rel in sample:
                            shown[rel] = Path(entry.path).read_bytes()
        except OSError:
            if not fired:
                raise
        finally:  # never left to fire in a later test
            timer.cancel()
    assert not fired, f"deadlock: {fired[0]}; the FUSE connection was aborted\n" \
        f"{chr(10).join(errors[:20])}\n{m.log()[-5000:]}"
    assert not any(t.is_alive() for t in threads)
    assert sorted(sizes) == sorted(expected), "the mount lost or invented files"
    assert [p for p in expected if sizes[p] != len(expected[p])] == [], "sizes differ"
    assert [p for p in sample if shown[p] != expected[p]] == [], "bytes differ on the mount"

    sync_started = time.monotonic()  # the queue must drain: bounded too
    result = pictofs_cmd(m, "sync", "--timeout", "240s", str(m.path), timeout=300)
    assert result.returncode == 0, f"pictofs sync: {result.stderr}\n{m.log()[-5000:]}"
    sync_seconds = time.monotonic() - sync_started
    status = m.status()
    assert status["uploads"]["failed"] == [] and status["uploads"]["pending"] == 0, status

    sampler.stop.set()
    sampler.thread.join(5)
    peak = sampler.field("VmHWM")
    assert peak <= RSS_LIMIT, f"daemon peak RSS {peak / 2**20:.0f} MB > 200 MB"

    # the service holds exactly the writers' files (and the seeded images), bytes equal
    images = list(client.images.list(dataset.id))
    live = {img.path.lstrip("/"): img for img in images}
    assert len(live) == len(images), "two live images share a path"
    lost = sorted(set(expected) - set(live))
    extra = sorted(set(live) - set(expected) - {f"seed/{n}" for n in seeded})
    assert not lost and not extra, f"lost {lost[:10]} ({len(lost)}), extra {extra[:10]} " \
        f"({len(extra)})"
    different = [p for p in expected if service_bytes(client, live[p].id, tmp_path)
                 != expected[p]]
    assert not different, f"bytes differ on the service: {different[:10]}"

    counts: dict[str, int] = {}
    for w in writers:
        for op, n in w.counts.items():
            counts[op] = counts.get(op, 0) + n
    print(f"\nload: {DURATION:.0f} s bound, ran {elapsed:.1f} s; writer ops {counts}; "
          f"files at the end {len(expected)}; reads {sum(r.reads for r in readers)} "
          f"({sum(r.bytes_read for r in readers)} bytes), listings "
          f"{sum(r.listings for r in readers)}; sync {sync_seconds:.1f} s; peak RSS "
          f"{peak / 2**20:.1f} MB (max sampled VmRSS "
          f"{max(sampler.samples or [0]) / 2**20:.1f} MB); lost 0, extra 0")
