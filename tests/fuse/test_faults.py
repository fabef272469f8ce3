"""The mount under a faulty service, crashes at every upload step, a server restart and a
full cache disk (filesystem §4 "Service unreachable", "the cache", §5 "Failures",
"Durability"). Figures measured with these tests are in ``docs/reliability.md``.

- ``cp -r`` of 500 images + ``pictofs sync`` through the fault proxy failing a seeded 10% of
  every request (503, 429 with ``Retry-After``, resets, stalls shorter than ``--timeout``,
  truncated bodies): nothing the user sees fails, every image lands once with its bytes. The
  same run without faults is the baseline of the slowdown the test prints (never asserted).
- An uncached read through a truncated body returns the right bytes or fails with ``EIO``,
  never other bytes.
- ``PICTOFS_FAULT=crash:POINT`` at every step boundary (new files: ``before_upload_url``;
  a replace: ``before_upload_url``, ``after_archive``, ``after_put``, ``after_register``;
  ``test_durability.py`` has ``after_put``/``after_register`` for new files): after the next
  mount and ``sync`` every file is there once, the replaced images are in the archive.
- The server stopped (SIGTERM) while uploads are in flight and started again on the same data
  folder and port: ``sync`` lands every file once.
- A full cache disk: reads of images larger than the disk return the right bytes from the
  stream, nothing is cached, one log line per image, no traceback.

``PICTOFS_LONG=1`` runs the long profile (more images, more seeds). Nothing here waits on the
wall clock except polls with a deadline.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from harness import free_port, restart_server, start_server, stop_server
from imagegen import png_bytes, sized_jpeg
from mountkit import crash_mount, kill_daemon, staging_files, sync, wait_for
from pictofs.api import Client
from pictofs.api import images as images_api
from seed import seed_images

from .test_durability import (cp_tree, crashed_mid_upload, finished_after_crash, pngs,
                              uploads_status, write_files)

pytestmark = pytest.mark.fuse

LONG = os.environ.get("PICTOFS_LONG") == "1"
MB = 1024 * 1024
BYTES_ROUTE = r"^/api/v1/developer/images/[0-9a-f-]{36}$"
FAULT_KINDS = ("503", "429", "reset", "stall", "truncate")
FAULT_RATE = 0.1
STALL = 1.0  # seconds: well under the mounts' --timeout below
TIMEOUT = "10s"
PREFETCH = 128 * 1024  # bytes a download reads before it hands any (transport.STREAM_CHUNK)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_bytes(client: Client, image_id: str) -> bytes:
    with images_api.open_bytes(client.transport, image_id) as stream:
        return b"".join(stream)


def tree(count: int, seed: int, folders: int = 5) -> dict[str, bytes]:
    """``count`` small distinct PNGs spread over ``folders`` subfolders: rel path → bytes."""
    return {f"d{n % folders}/img{n:04d}.png": png_bytes(seed + n) for n in range(count)}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def assert_landed_once(client: Client, dataset_id: str, folder: str,
                       files: dict[str, bytes]) -> None:
    """Every file of ``files`` (relative to ``folder``) is on the service exactly once, live,
    with its bytes; nothing else is in the dataset, nothing archived, every id distinct."""
    images = list(client.images.list(dataset_id, include_archived=True))
    paths = Counter(img.path for img in images)
    expected = {f"{folder.rstrip('/')}/{rel}" for rel in files}
    assert not [p for p, n in paths.items() if n > 1], "duplicates on the service"
    assert set(paths) == expected, (f"missing {sorted(expected - set(paths))[:5]}, "
                                    f"extra {sorted(set(paths) - expected)[:5]}")
    assert len({img.id for img in images}) == len(images)
    assert not [img.path for img in images if img.is_archived]
    by_path = {img.path: img for img in images}
    with ThreadPoolExecutor(8) as pool:
        digests = dict(zip(by_path, pool.map(lambda i: sha(image_bytes(client, i.id)),
                                             by_path.values())))
    wrong = [p for p in expected if digests[p] != sha(files[p[len(folder.rstrip('/')) + 1:]])]
    assert not wrong, f"bytes differ on the service: {wrong[:5]}"


def assert_queue_clean(m) -> None:  # type: ignore[no-untyped-def]
    status = uploads_status(m)
    assert (status["pending"], status["in_flight"], status["failed"]) == (0, 0, []), status


# ---------------------------------------------------------------------- random faults


def copy_and_sync(mount, base_url: str, source: Path,  # type: ignore[no-untyped-def]
                  dataset_name: str) -> tuple[object, float, float]:
    """Mount, ``cp -r SOURCE/. MOUNT/``, ``pictofs sync``: the Mount, the seconds the copy
    took and the seconds copy and sync took together (figures for the report, never
    asserted)."""
    m = mount(dataset_name, "--write-back", "0.2s", "--retry-max-wait", "2s",
              "--timeout", TIMEOUT, "--dir-cache-time", "5m", base_url=base_url)
    started = time.monotonic()
    result = subprocess.run(["cp", "-r", f"{source}/.", f"{m.path}/"], capture_output=True,
                            text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"cp failed: {result.stderr}\n{m.log()[-3000:]}"
    copied = time.monotonic() - started
    sync(m, timeout=600)
    return m, copied, time.monotonic() - started


SEEDS = [11, 12, 13] if LONG else [11]


@pytest.mark.timeout(1200 if LONG else 300)
@pytest.mark.parametrize("seed", SEEDS)
def test_cp_r_and_sync_through_10_percent_faults_land_every_image_once(
        client, dataset, server, mount, tmp_path, seed):
    count = 2000 if LONG else 500
    files = tree(count, seed=seed * 100_000)
    source = tmp_path / "src"
    write_tree(source, files)
    clean_dataset = client.projects.create(f"{dataset.name}-clean")
    with FaultProxy(upstream=server.base_url, seed=seed) as proxy:
        # the baseline: the same copy through the same proxy, no faults
        clean, clean_cp, clean_seconds = copy_and_sync(mount, proxy.url, source,
                                                       clean_dataset.name)
        assert sum(proxy.stats.faults.values()) == 0
        clean_requests = len(proxy.stats.responses)
        proxy.reset_stats()
        proxy.set_random_faults(rate=FAULT_RATE, kinds=FAULT_KINDS, stall_seconds=STALL,
                                retry_after=1)
        m, faulty_cp, seconds = copy_and_sync(mount, proxy.url, source, dataset.name)
        proxy.clear_faults()
        stats = proxy.stats
    faults = stats.faults
    requests = len(stats.responses)
    print(f"\nFIGURES faults seed={seed} images={count} rate={FAULT_RATE} "
          f"requests={requests} faults={sum(faults.values())} by_kind={dict(faults)} "
          f"clean_requests={clean_requests} clean={clean_seconds:.1f}s (cp {clean_cp:.1f}s) "
          f"faulty={seconds:.1f}s (cp {faulty_cp:.1f}s) "
          f"slowdown={seconds / clean_seconds:.2f}x")
    assert set(faults) == set(FAULT_KINDS), f"not every kind of fault was injected: {faults}"
    assert sum(faults.values()) >= 0.05 * requests
    assert not stats.errors, stats.errors
    for each in (clean, m):
        assert_queue_clean(each)
        assert staging_files(each, clean_dataset if each is clean else dataset) == []
    assert "failed:" not in m.log()
    assert_landed_once(client, dataset.id, "/", files)
    assert_landed_once(client, clean_dataset.id, "/", files)


# ---------------------------------------------------------------------- truncated reads


@pytest.fixture()
def proxy(server):  # type: ignore[no-untyped-def]
    with FaultProxy(upstream=server.base_url, seed=3) as p:
        yield p


def read_or_eio(path: Path) -> bytes | None:
    """The whole file, or None when the read failed with EIO; any other error fails."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return None


def test_an_uncached_read_through_a_truncated_body_is_retried_or_fails_eio(
        client, dataset, mount, proxy):
    """Cut the bytes route at different places (inside and past the first chunk a download
    reads before it answers, and past the first MiB), once or every time: each uncached read
    returns exactly the image's bytes or fails with EIO (a single cut is always recovered:
    inside the first chunk the transport retries, after it the download asks again and skips
    what it has; a cut on every attempt is EIO), and a failed read leaves nothing wrong
    behind (the next read, unfaulted, is right)."""
    sizes = {"small.jpg": 200_000, "mid.jpg": 1_500_000, "big.jpg": 3 * MB}
    cases = [(name, keep, times) for name in sizes
             for keep in (0, 100, PREFETCH + 4096, sizes[name] // 2,
                          min(MB + 4096, sizes[name] - 10))
             for times in (1, 8)]
    names = [f"{n:02d}-{name}" for n, (name, _keep, _times) in enumerate(cases)]
    made = seed_images(client, dataset.id, "/", names,
                       data_for=lambda n: sized_jpeg(sizes[n[3:]], seed=int(n[:2])))
    # --prefetch 0: the images are read in name order, and a read-ahead would fetch the
    # next one before its fault is set up
    m = mount(dataset.name, "--timeout", TIMEOUT, "--retry-max-wait", "0.2s",
              "--prefetch", "0", base_url=proxy.url)
    assert sorted(os.listdir(m.path)) == sorted(names)
    outcomes: Counter[str] = Counter()
    for name, (_base, keep, times) in zip(names, cases):
        image, data = made[name]
        route = rf"^/api/v1/developer/images/{image.id}$"
        proxy.truncate_next(count=times, keep_bytes=keep, method="GET", path=route)
        got = read_or_eio(m.path / name)
        if got is None:
            assert times > 1, f"{name} cut once at {keep}: EIO"
            outcomes["eio"] += 1
        else:
            assert len(got) == len(data) and got == data, (
                f"{name} cut at {keep} ×{times}: wrong bytes ({len(got)} of {len(data)})")
            outcomes["right"] += 1
        proxy.clear_faults()
        # a failed read may leave the breaker open a moment: wait for the service, then the
        # same image reads right (nothing wrong was cached)
        wait_for(lambda: m.status()["service"] == "ok", "the service to be reachable again")
        assert (m.path / name).read_bytes() == data, name
    print(f"\nFIGURES truncated reads: {dict(outcomes)} of {len(cases)}")
    assert outcomes["right"] >= 1 and outcomes["eio"] >= 1, outcomes
    assert proxy.stats.faults["truncate"] >= len(cases)


# ---------------------------------------------------------------------- crash points


def test_crash_before_the_upload_url_loses_nothing_and_duplicates_nothing(
        client, dataset, mount, tmp_path):
    """New files (``test_durability.py`` covers ``after_put`` and ``after_register``)."""
    files = pngs(24, seed=5000)
    m = crashed_mid_upload(mount, dataset, "/new", files, tmp_path, "before_upload_url", 3)
    finished_after_crash(mount, dataset, m)
    assert_landed_once(client, dataset.id, "/new", files)


REPLACE_POINTS = ["before_upload_url", "after_archive", "after_put", "after_register"]


@pytest.mark.parametrize("point", REPLACE_POINTS)
def test_crash_during_a_replace_never_loses_the_replaced_image(client, dataset, mount, tmp_path,
                                                               point):
    """Write over 8 existing images, then crash at the second time an upload reaches
    ``point`` (the eight run side by side, so the others are at various steps): after the
    next mount and ``sync`` each name holds the new bytes once, and each replaced image is
    in the archive with its old bytes (same id): none lost, none twice."""
    names = [f"r{n}.png" for n in range(8)]
    old = seed_images(client, dataset.id, "/rep", names,
                      data_for=lambda n: png_bytes(7000 + int(n[1:-4])))
    new = {name: png_bytes(8000 + n) for n, name in enumerate(names)}
    m = mount(dataset.name, "--write-back", "1h")
    assert sorted(os.listdir(m.path / "rep")) == sorted(names)
    for name, data in new.items():
        (m.path / "rep" / name).write_bytes(data)  # O_TRUNC over the image: a replace
    wait_for(lambda: uploads_status(m)["pending"] == 8, "8 pending replaces")
    kill_daemon(m)
    crash_mount(mount, m, dataset.name, point, 2)
    again = mount(dataset.name, "--write-back", "0.2s", mountpoint=m.path)
    sync(again)

    images = list(client.images.list(dataset.id, include_archived=True))
    live = [i for i in images if not i.is_archived]
    archived = [i for i in images if i.is_archived]
    assert sorted(i.path for i in live) == sorted(f"/rep/{n}" for n in names), "lost or twice"
    for image in live:
        assert image_bytes(client, image.id) == new[image.filename], image.path
        assert image.id != old[image.filename][0].id
    assert sorted(i.id for i in archived) == sorted(img.id for img, _ in old.values()), (
        "the archive does not hold exactly the replaced images")
    for image in archived:
        assert image_bytes(client, image.id) == old[image.filename][1], image.path
    assert staging_files(again, dataset) == []
    assert_queue_clean(again)
    for name, data in new.items():
        assert (again.path / "rep" / name).read_bytes() == data


# ---------------------------------------------------------------------- server restart


@pytest.fixture()
def own_server(tmp_path):  # type: ignore[no-untyped-def]
    """A reference server of this test's own on a fixed port, and ``restart()``: SIGTERM,
    then the same data folder and port (the mount's base URL stays valid); stopped at
    teardown."""
    handles = [start_server(tmp_path / "own-server", tmp_path / "own-server.log",
                            port=free_port())]

    def restart():  # type: ignore[no-untyped-def]
        handles.append(restart_server(handles[-1]))
        return handles[-1]

    yield handles[0], restart
    for handle in handles:
        stop_server(handle)


def test_server_restart_mid_run_lands_every_file_once(own_server, mount, tmp_path):
    server, restart = own_server
    client = Client(api_key=server.key, base_url=server.base_url)
    dataset = client.projects.create("restart")
    count = 300 if LONG else 120
    files = pngs(count, seed=9000)
    m = mount(dataset.name, "--write-back", "0.2s", "--transfers", "1", "--retry-max-wait", "1s",
              "--dir-cache-time", "5m",
              env={"PICTOGRAPH_API_KEY": server.key, "PICTOGRAPH_BASE_URL": server.base_url})
    (m.path / "run").mkdir()
    os.listdir(m.path / "run")
    # Two copies: the first 20 files land, then the rest go up as one batch (a copy is
    # gathered into few batches), and the server stops once some of its PUTs are in.
    names = list(files)
    first, rest = names[:20], names[20:]
    write_files(tmp_path / "src1", {name: files[name] for name in first})
    write_files(tmp_path / "src2", {name: files[name] for name in rest})
    cp_tree(tmp_path / "src1", m.path / "run")
    wait_for(lambda: len(list(client.images.list(dataset.id))) >= 10,
             "the first registers", timeout=120)
    puts = server.calls("PUT", "storage/upload")
    cp_tree(tmp_path / "src2", m.path / "run")
    wait_for(lambda: server.calls("PUT", "storage/upload") >= puts + 5, "PUTs of the second copy",
             timeout=120)
    landed_before = len(list(client.images.list(dataset.id)))
    restarted = restart()  # SIGTERM with uploads in flight, then the same data and port
    assert restarted.base_url == server.base_url
    landed_at_restart = len(list(client.images.list(dataset.id)))
    sync(m, timeout=300)
    print(f"\nFIGURES server restart: {landed_before} of {count} landed before the stop, "
          f"{landed_at_restart} right after the restart")
    assert landed_at_restart < count, "every upload was done before the server stopped"
    assert_landed_once(client, dataset.id, "/run", files)
    assert staging_files(m, dataset) == []
    assert_queue_clean(m)
    assert sorted(os.listdir(m.path / "run")) == sorted(files)


# ---------------------------------------------------------------------- a full cache disk


@pytest.fixture()
def full_cache_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs for the cache dir; ``fill()`` takes what is left of it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "cachedisk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)],
                   check=True, timeout=30)

    def fill() -> None:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)

    yield disk, fill
    if subprocess.run(["umount", str(disk)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest.mark.parametrize("when", ["before_mount", "after_mount"])
def test_a_full_cache_disk_serves_reads_from_the_stream(client, dataset, mount, full_cache_disk,
                                                        when):
    """The cache dir on a 1 MiB tmpfs, full before the mount (the cache folder cannot even be
    set up) or after it (every cache file fails): images of 2 MiB and 50 KB read right, twice,
    nothing is kept, the warnings are few (one at start, or one per download), no traceback,
    and ``pictofs status`` still answers."""
    disk, fill = full_cache_disk
    names = [f"big{n}.jpg" for n in range(3)] + ["small.jpg"]
    made = seed_images(client, dataset.id, "/", names,
                       data_for=lambda n: sized_jpeg(2 * MB if n.startswith("big") else 50_000,
                                                     seed=len(n) + ord(n[-5])))
    if when == "before_mount":
        fill()
    m = mount(dataset.name, cache_dir=disk / "cache")
    if when == "after_mount":
        fill()
    assert sorted(os.listdir(m.path)) == sorted(names)
    for _round in range(2):
        for name in names:
            assert (m.path / name).read_bytes() == made[name][1], name

    def cache_files() -> list[Path]:
        return [p for p in (disk / "cache").rglob("*") if p.is_file()
                and p.parent.name in ("data", "partial")]

    wait_for(lambda: not cache_files(), "no cache file left behind")
    status = m.status()
    assert status["service"] == "ok"
    warnings = [line for line in m.log().splitlines() if " WARNING " in line or " ERROR " in line]
    if when == "before_mount":
        assert len(warnings) == 1 and "cannot use the cache folder" in warnings[0], warnings
    else:
        for name in names:
            lines = [line for line in warnings if made[name][0].id in line]
            assert 1 <= len(lines) <= 2, lines  # one per download, never a flood
        assert all("No space left on device" in line for line in warnings), warnings
