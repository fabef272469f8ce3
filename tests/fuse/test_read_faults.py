"""The read side under slow, cut and absent service, and with a damaged or full cache
(filesystem §4). The fault proxy sits between the mount and the reference server; assertions
are made on what the proxy saw, never on elapsed time.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from imagegen import sized_jpeg
from seed import seed_images

pytestmark = pytest.mark.fuse

BYTES_ROUTE = r"^/api/v1/developer/images/[0-9a-f-]{36}$"
BYTES_BY_ID = "/api/v1/developer/images/{image_id}"


@pytest.fixture()
def proxy(server):  # type: ignore[no-untyped-def]
    with FaultProxy(upstream=server.base_url, seed=1) as p:
        yield p


def cache_data_files(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*") if p.is_file() and p.parent.name == "data"]


def settle_cache(cache_dir: Path, timeout: float = 30) -> None:
    """Wait until no download is still being committed (no partial files left)."""
    deadline = time.monotonic() + timeout
    while any(p.is_file() for p in cache_dir.rglob("partial/*")):
        assert time.monotonic() < deadline, "downloads never settled"
        time.sleep(0.05)


def test_first_bytes_arrive_while_the_server_is_still_streaming(client, dataset, mount, proxy):
    data = sized_jpeg(10 * 1024 * 1024, seed=10)
    seed_images(client, dataset.id, "/", ["big.jpg"], data_for=lambda n: data)
    m = mount(dataset.name, base_url=proxy.url)
    os.listdir(m.path)
    proxy.throttle(1024 * 1024)  # 10 s for the whole image
    with open(m.path / "big.jpg", "rb") as handle:
        first = handle.read(4096)
        stats = proxy.stats
        download = [r for r in stats.records("GET", BYTES_ROUTE)]
        assert first == data[:4096]
        assert download and download[-1].in_progress and not download[-1].complete, (
            "the first read waited for the whole image")
        proxy.throttle(None)
        assert first + handle.read() == data


def test_download_cancelled_when_the_reader_leaves_early(client, dataset, mount, proxy):
    data = sized_jpeg(8 * 1024 * 1024, seed=11)
    seed_images(client, dataset.id, "/", ["leave.jpg"], data_for=lambda n: data)
    m = mount(dataset.name, base_url=proxy.url)
    os.listdir(m.path)
    proxy.throttle(512 * 1024)
    with open(m.path / "leave.jpg", "rb") as handle:
        assert handle.read(1000) == data[:1000]
    proxy.wait_for(lambda s: all(not r.in_progress for r in s.records("GET", BYTES_ROUTE)),
                   timeout=20)
    settle_cache(m.cache_dir)
    record = proxy.stats.records("GET", BYTES_ROUTE)[-1]
    assert not record.complete and record.bytes_sent < len(data) // 2
    assert not cache_data_files(m.cache_dir), "a cancelled download was kept in the cache"
    proxy.throttle(None)
    assert (m.path / "leave.jpg").read_bytes() == data


def test_cache_cap_is_respected_under_a_flood_of_reads(client, dataset, mount):
    made = seed_images(client, dataset.id, "/", [f"f{i}.jpg" for i in range(30)],
                       data_for=lambda n: sized_jpeg(300_000, seed=int(n[1:-4])))
    cap = 2 * 1024 * 1024
    m = mount(dataset.name, "--cache-size", str(cap))
    threads = [threading.Thread(target=lambda n=name: (m.path / n).read_bytes())
               for name in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    settle_cache(m.cache_dir)
    sizes = sum(p.stat().st_size for p in cache_data_files(m.cache_dir))
    assert 0 < sizes <= cap
    for name, (_image, data) in list(made.items())[:5]:
        assert (m.path / name).read_bytes() == data


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_entry_is_fetched_again(client, dataset, mount, server, damage):
    data = sized_jpeg(200_000, seed=12)
    seed_images(client, dataset.id, "/", ["d.jpg"], data_for=lambda n: data)
    m = mount(dataset.name)
    assert (m.path / "d.jpg").read_bytes() == data
    m.umount()
    [entry] = cache_data_files(m.cache_dir)
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        raw[len(raw) // 2] ^= 0xFF
        entry.write_bytes(bytes(raw))
    before = server.calls("GET", BYTES_BY_ID)
    m2 = mount(dataset.name, cache_dir=m.cache_dir)
    assert (m2.path / "d.jpg").read_bytes() == data
    assert server.calls("GET", BYTES_BY_ID) == before + 1, "the damaged entry was served"
    assert (m2.path / "d.jpg").read_bytes() == data
    assert server.calls("GET", BYTES_BY_ID) == before + 1, "the refetched entry was not kept"


def test_service_down_cached_reads_work_uncached_fail_fast(client, dataset, mount, proxy):
    made = seed_images(client, dataset.id, "/", ["cached.png", "uncached.png"])
    # --prefetch 0: reading cached.png, the folder's first image, would fetch the next ahead
    m = mount(dataset.name, "--retries", "0", "--timeout", "2s", "--prefetch", "0",
              base_url=proxy.url)
    assert sorted(os.listdir(m.path)) == ["cached.png", "uncached.png"]
    assert (m.path / "cached.png").read_bytes() == made["cached.png"][1]
    proxy.pause()
    with pytest.raises(OSError) as info:
        (m.path / "uncached.png").read_bytes()
    assert info.value.errno == errno.EIO
    # the breaker is open now: the next uncached open fails at once, without a request
    status = m.status()
    assert status["service"] == "unreachable" and status["breaker"]["trips"] == 1
    with pytest.raises(OSError) as info:
        (m.path / "uncached.png").read_bytes()
    assert info.value.errno == errno.EIO
    assert m.status()["breaker"]["refused"] > status["breaker"]["refused"]
    assert (m.path / "cached.png").read_bytes() == made["cached.png"][1]
    assert sorted(os.listdir(m.path)) == ["cached.png", "uncached.png"]
    proxy.resume()
    deadline = time.monotonic() + 20
    while m.status()["service"] != "ok":
        assert time.monotonic() < deadline, "the breaker never closed"
        time.sleep(0.1)
    assert (m.path / "uncached.png").read_bytes() == made["uncached.png"][1]
    assert "service unreachable" in m.log() and "reachable again" in m.log()


def test_mount_while_the_service_is_down_uses_the_remembered_dataset(client, dataset, mount,
                                                                     proxy):
    made = seed_images(client, dataset.id, "/", ["r.png"])
    first = mount(dataset.name, base_url=proxy.url)
    assert os.listdir(first.path) == ["r.png"]
    first.umount()
    proxy.pause()
    unknown = mount("never-mounted-here", "--timeout", "1s", base_url=proxy.url,
                    expect_fail=True)
    assert "unreachable" in unknown.args[-1]
    again = mount(dataset.name, "--timeout", "1s", base_url=proxy.url,
                  cache_dir=first.cache_dir)
    assert again.status()["service"] == "unreachable"
    with pytest.raises(OSError) as info:
        os.listdir(again.path)
    assert info.value.errno == errno.EIO
    proxy.resume()
    deadline = time.monotonic() + 20
    while again.status()["service"] != "ok":
        assert time.monotonic() < deadline, "the mount never reconnected"
        time.sleep(0.1)
    assert os.listdir(again.path) == ["r.png"]
    assert (again.path / "r.png").read_bytes() == made["r.png"][1]
