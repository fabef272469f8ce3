"""The read side of the mount, through a real FUSE mount and real tools (filesystem §1–§4).

Request counts come from the server's ``/metrics``: the listing routes, the per-image routes
and the bytes route are counted separately, so "zero per-image calls" is checked exactly.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagegen import png_bytes, sized_jpeg
from seed import seed_images

pytestmark = pytest.mark.fuse

LIST_IMAGES = "/api/v1/developer/images/"
FOLDERS = "/api/v1/developer/directories/{dataset}"
STORAGE_READ = "/storage/object/{token}"  # where the hosted profile redirects image bytes


def image_routes(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Request counts by route template for the image and folder routes, settled
    (``ServerHandle.settled_metrics``: a snapshot right after a read must count it)."""
    counts: dict[str, int] = {}
    for (method, route, _status), n in server.settled_metrics().items():
        if "/images" in route or "/directories" in route or "/annotations" in route:
            key = f"{method} {route}"
            counts[key] = counts.get(key, 0) + n
    return counts


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after
            if after.get(k, 0) != before.get(k, 0)}


def bytes_route_calls(changes: dict[str, int]) -> int:
    return sum(n for k, n in changes.items()
               if k.startswith("GET ") and k.split()[1].startswith("/api/v1/developer/images/{")
               and not k.endswith("metadata"))


def storage_reads(server) -> int:  # type: ignore[no-untyped-def]
    """Image bytes served by the storage host at a signed URL (the hosted profile answers
    the bytes route with a 307 there; the reference server streams them itself)."""
    return sum(n for (method, route, status), n in server.metrics().items()
               if method == "GET" and route == STORAGE_READ and status == 200)


def ls_lr(root: Path) -> dict[str, int]:
    """Relative path → size of every file below ``root`` (via find, a real tool)."""
    out = subprocess.run(["find", str(root), "-type", "f", "-printf", "%P\t%s\n"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return {p: int(s) for p, s in (line.split("\t") for line in out.splitlines())}


@pytest.mark.profiles("reference", "hosted")
def test_nested_folders_match_the_service(client, dataset, mount):
    made = {}
    for folder in ("/", "/cars", "/cars/red", "/cars/blue", "/trucks"):
        names = [f"{folder.strip('/').replace('/', '-') or 'root'}-{i}.png" for i in range(3)]
        for name, (image, data) in seed_images(client, dataset.id, folder, names).items():
            made[(folder.rstrip("/") + "/" + name).lstrip("/")] = data
    client.transport.request_json("POST", "/directories/",
                                  json={"dataset": dataset.id, "directory_path": "/empty/sub"})
    m = mount(dataset.name)
    assert ls_lr(m.path) == {p: len(d) for p, d in made.items()}
    dirs = subprocess.run(["find", str(m.path), "-mindepth", "1", "-type", "d", "-printf", "%P\n"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert sorted(dirs) == ["cars", "cars/blue", "cars/red", "empty", "empty/sub", "trucks"]
    for rel, data in made.items():
        assert (m.path / rel).read_bytes() == data, rel
    result = subprocess.run(["ls", "-la", str(m.path)], capture_output=True, text=True)
    assert result.returncode == 0 and ".archive" not in result.stdout


@pytest.mark.profiles("reference", "hosted")
def test_ls_l_of_2500_images_costs_three_pages_and_one_folder_call(client, dataset, mount, server):
    names = [f"img{i:05d}.png" for i in range(2500)]
    seed_images(client, dataset.id, "/big", names, data_for=lambda n: png_bytes(int(n[3:8])))
    m = mount(dataset.name)
    os.listdir(m.path)  # list the root first, so "big" is known
    before = image_routes(server)
    out = subprocess.run(["ls", "-l", str(m.path / "big")], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    changes = delta(before, image_routes(server))
    rows = [line for line in out.splitlines() if line.startswith("-")]
    assert len(rows) == 2500
    assert changes.get(f"GET {LIST_IMAGES}", 0) == 3, changes
    assert sum(n for k, n in changes.items() if "/directories/" in k) == 1, changes
    assert sum(changes.values()) == 4, f"per-image calls were made: {changes}"
    # stat of every file afterwards: answered from the listing, no request at all
    before = image_routes(server)
    for name in names[:300]:
        os.stat(m.path / "big" / name)
    assert delta(before, image_routes(server)) == {}


@pytest.mark.profiles("reference", "hosted")
def test_lookup_in_an_unlisted_small_folder_lists_it_once(client, dataset, mount, server):
    """A folder of at most one page of images (its image count from the folders route) is
    listed on the first name asked in it: one page and one folders call answer every name,
    so ``rsync`` into it after a remount asks nothing per file (filesystem §3)."""
    seed_images(client, dataset.id, "/f", [f"x{i}.png" for i in range(20)])
    m = mount(dataset.name)
    os.stat(m.path / "f")  # the folder itself is found through the folders route
    before = image_routes(server)
    st = os.stat(m.path / "f" / "x7.png")
    changes = delta(before, image_routes(server))
    assert st.st_size > 0
    assert changes == {f"GET {LIST_IMAGES}": 1, f"GET {FOLDERS}": 1}, changes
    before = image_routes(server)
    for i in range(20):
        assert os.stat(m.path / "f" / f"x{i}.png").st_size > 0
    for i in range(30):
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "f" / f"new{i}.png")  # negative answers from the listing
    assert delta(before, image_routes(server)) == {}


def test_second_read_of_a_cached_image_makes_no_request(client, dataset, mount, server):
    made = seed_images(client, dataset.id, "/", ["a.png"])
    m = mount(dataset.name)
    assert (m.path / "a.png").read_bytes() == made["a.png"][1]
    before = image_routes(server)
    assert (m.path / "a.png").read_bytes() == made["a.png"][1]
    assert delta(before, image_routes(server)) == {}
    # a new mount on the same cache: still no bytes request
    m.umount()
    m2 = mount(dataset.name, cache_dir=m.cache_dir)
    os.listdir(m2.path)
    before = image_routes(server)
    assert (m2.path / "a.png").read_bytes() == made["a.png"][1]
    assert bytes_route_calls(delta(before, image_routes(server))) == 0


@pytest.mark.profiles("reference", "hosted")
def test_two_concurrent_readers_share_one_download(client, dataset, mount, server):
    data = sized_jpeg(6 * 1024 * 1024, seed=3)
    seed_images(client, dataset.id, "/", ["big.jpg"], data_for=lambda n: data)
    m = mount(dataset.name)
    os.listdir(m.path)
    before, stored_before = image_routes(server), storage_reads(server)
    results: list[bytes] = []
    readers = [threading.Thread(target=lambda: results.append((m.path / "big.jpg").read_bytes()))
               for _ in range(2)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(60)
    assert results == [data, data]
    assert bytes_route_calls(delta(before, image_routes(server))) == 1
    # hosted: that one bytes request was a redirect, followed once to the storage host
    redirected = 1 if server.profile == "hosted" else 0
    assert storage_reads(server) - stored_before == redirected


@pytest.mark.profiles("reference", "hosted")
def test_cmp_every_image_with_its_source(client, dataset, mount, tmp_path):
    made = seed_images(client, dataset.id, "/c", [f"i{i}.jpg" for i in range(25)],
                       data_for=lambda n: sized_jpeg(50_000 + int(n[1:-4]) * 1000,
                                                     seed=int(n[1:-4])))
    m = mount(dataset.name)
    for name, (_image, data) in made.items():
        source = tmp_path / name
        source.write_bytes(data)
        assert subprocess.run(["cmp", str(source), str(m.path / "c" / name)]).returncode == 0


def test_getfattr_values_and_annotations(client, dataset, mount, server):
    made = seed_images(client, dataset.id, "/", ["x.png"])
    image = made["x.png"][0]
    client.transport.request_json(
        "POST", f"/annotations/{dataset.id}/x.png",
        json={"annotations": [{"type": "bbox", "label": "car", "bbox": [1, 2, 3, 4]}]})
    m = mount(dataset.name)
    out = subprocess.run(["getfattr", "-d", "--absolute-names", str(m.path / "x.png")],
                         capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert values["user.pictograph.id"] == f'"{image.id}"'
    assert values["user.pictograph.status"] == '"new"'
    assert values["user.pictograph.width"] == '"8"' and values["user.pictograph.height"] == '"6"'
    assert values["user.pictograph.content_type"] == '"image/png"'
    assert values["user.pictograph.tags"] == '"[]"'
    assert "user.pictograph.annotations" not in values  # by exact name only
    raw = subprocess.run(["getfattr", "--only-values", "-n", "user.pictograph.annotations",
                          str(m.path / "x.png")], capture_output=True, check=True).stdout
    assert json.loads(raw)[0]["label"] == "car"
    with pytest.raises(OSError) as info:
        os.getxattr(m.path / "x.png", "security.capability")
    assert info.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as info:
        os.getxattr(m.path / "x.png", "user.unknown")
    assert info.value.errno == errno.ENODATA


def test_df_and_stat_look_normal(client, dataset, mount):
    seed_images(client, dataset.id, "/", ["a.png"])
    m = mount(dataset.name)
    vfs = os.statvfs(m.path)
    assert vfs.f_namemax == 255 and vfs.f_bavail > 0
    assert subprocess.run(["df", str(m.path)], capture_output=True).returncode == 0
    st = os.stat(m.path / "a.png")
    assert oct(st.st_mode & 0o777) in ("0o444", "0o644") and st.st_nlink == 1
    assert st.st_uid == os.getuid() and st.st_blocks == -(-st.st_size // 512)
    assert os.stat(m.path).st_nlink >= 2
    file_out = subprocess.run(["file", "-b", str(m.path / "a.png")], capture_output=True,
                              text=True).stdout
    assert "PNG image data, 8 x 6" in file_out


def test_change_shows_after_dir_cache_time_and_at_once_after_refresh(client, dataset, mount):
    seed_images(client, dataset.id, "/", ["one.png"])
    m = mount(dataset.name, "--dir-cache-time", "2s")
    assert sorted(os.listdir(m.path)) == ["one.png"]
    seed_images(client, dataset.id, "/", ["two.png"])
    deadline = time.monotonic() + 10
    while "two.png" not in os.listdir(m.path):
        assert time.monotonic() < deadline, "change never showed"
        time.sleep(0.2)
    m2 = mount(dataset.name, "--dir-cache-time", "1h", "--read-only")
    assert sorted(os.listdir(m2.path)) == ["one.png", "two.png"]
    seed_images(client, dataset.id, "/", ["three.png"])
    assert "three.png" not in os.listdir(m2.path)
    m2.refresh()
    started = time.monotonic()
    while "three.png" not in os.listdir(m2.path):
        assert time.monotonic() - started < 1.0, "refresh did not show the change within 1 s"
        time.sleep(0.05)


def test_read_only_mount_refuses_writes(client, dataset, mount):
    seed_images(client, dataset.id, "/", ["a.png"])
    m = mount(dataset.name, "--read-only")
    with pytest.raises(OSError) as info:
        (m.path / "new.png").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.unlink(m.path / "a.png")
    assert info.value.errno == errno.EROFS
    assert oct(os.stat(m.path / "a.png").st_mode & 0o777) == "0o444"


def test_links_are_refused(client, dataset, mount):
    seed_images(client, dataset.id, "/", ["a.png"])
    m = mount(dataset.name)
    with pytest.raises(OSError) as info:
        os.link(m.path / "a.png", m.path / "b.png")
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        os.symlink("a.png", m.path / "c.png")
    assert info.value.errno == errno.EPERM


def test_second_writable_mount_of_a_dataset_is_refused(client, dataset, mount):
    mount(dataset.name)
    second = mount(dataset.name, expect_fail=True)
    assert "in use" in second.args[-1] and "Traceback" not in second.args[-1]
    assert mount(dataset.name, "--read-only").path.is_dir()


@pytest.mark.profiles("reference", "hosted")
def test_organization_mount_lists_datasets(client, mount):
    first = client.projects.create("org-view-a")
    client.projects.create("org-view-b")
    seed_images(client, first.id, "/", ["p.png"])
    m = mount(None)
    names = os.listdir(m.path)
    assert "org-view-a" in names and "org-view-b" in names
    assert os.listdir(m.path / "org-view-a") == ["p.png"]
    os.mkdir(m.path / "org-view-new")
    assert client.projects.get("org-view-new").name == "org-view-new"
    with pytest.raises(OSError) as info:
        os.rmdir(m.path / "org-view-b")
    assert info.value.errno == errno.EPERM


@pytest.mark.profiles("reference", "hosted")
def test_mount_start_up_errors_are_one_line(dataset, mount, tmp_path, server):
    missing = mount("no-such-dataset-xyz", expect_fail=True)
    assert "no-such-dataset-xyz" in missing.args[-1]
    assert "Traceback" not in missing.args[-1]
    env = dict(os.environ, PICTOGRAPH_API_KEY="pk_live_wrong", PICTOGRAPH_BASE_URL=server.base_url)
    target = tmp_path / "mp"
    target.mkdir()
    result = subprocess.run([sys.executable, "-m", "pictofs", "mount", dataset.name, str(target)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "pk_live_wrong" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "pictofs", "mount", dataset.name,
                             str(tmp_path / "absent")], capture_output=True, text=True,
                            env=dict(env, PICTOGRAPH_API_KEY=server.key), timeout=60)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_killed_daemon_leaves_a_stale_mount_that_the_next_mount_cleans(client, dataset, mount):
    seed_images(client, dataset.id, "/", ["a.png"])
    m = mount(dataset.name)
    pid = m.status()["pid"]
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.listdir(m.path)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    m.mounted = False
    again = mount(dataset.name, "--read-only")
    assert again.path != m.path
    # remount on the very same stale mountpoint
    result = subprocess.run([sys.executable, "-m", "pictofs", "mount", dataset.name, str(m.path),
                             "--cache-dir", str(m.cache_dir), "--log-file", str(m.log_file)],
                            capture_output=True, text=True, env=m.env, timeout=60)
    assert result.returncode == 0, result.stderr
    m.mounted = True
    assert os.listdir(m.path) == ["a.png"]
    assert "stale mount" in m.log() + result.stderr


def test_listing_while_another_client_uploads_and_archives(client, dataset, mount, server):
    seed_images(client, dataset.id, "/busy", [f"base{i}.png" for i in range(1500)])
    m = mount(dataset.name, "--dir-cache-time", "0.2s")
    stop = threading.Event()
    churn_errors: list[BaseException] = []

    def churn() -> None:
        n = 0
        try:
            while not stop.is_set():
                made = seed_images(client, dataset.id, "/busy", [f"new{n}.png"])
                client.images.delete(made[f"new{n}.png"][0].id)
                n += 1
        except BaseException as exc:  # reported by the test below
            churn_errors.append(exc)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(8):
            names = os.listdir(m.path / "busy")
            assert len(names) == len(set(names)), "a listing showed a name twice"
            assert {f"base{i}.png" for i in range(1500)} <= set(names)
            time.sleep(0.25)
    finally:
        stop.set()
        worker.join(60)
    assert not churn_errors
    m.refresh()
    service = {img.filename for img in client.images.list(dataset.id, folder_path="/busy")}
    assert set(os.listdir(m.path / "busy")) == service


def test_sighup_drops_the_listing_cache(client, dataset, mount):
    seed_images(client, dataset.id, "/", ["one.png"])
    m = mount(dataset.name, "--dir-cache-time", "1h")
    assert os.listdir(m.path) == ["one.png"]
    seed_images(client, dataset.id, "/", ["two.png"])
    assert os.listdir(m.path) == ["one.png"]
    os.kill(m.status()["pid"], 1)  # SIGHUP
    deadline = time.monotonic() + 10
    while sorted(os.listdir(m.path)) != ["one.png", "two.png"]:
        assert time.monotonic() < deadline, "SIGHUP did not drop the listing cache"
        time.sleep(0.05)
    assert m.status()["pid"], "the daemon must survive SIGHUP"


def test_page_cache_is_kept_only_for_the_same_image_id(client, dataset, mount):
    first = seed_images(client, dataset.id, "/", ["p.jpg"],
                        data_for=lambda n: sized_jpeg(300_000, seed=21))["p.jpg"]
    m = mount(dataset.name, "--dir-cache-time", "1h")
    assert (m.path / "p.jpg").read_bytes() == first[1]
    reads = m.status()["reads"]
    assert (m.path / "p.jpg").read_bytes() == first[1]
    assert m.status()["reads"] == reads, "the second open did not keep the kernel page cache"
    # another client replaces the image: same name, new id and new bytes
    client.images.delete(first[0].id)
    second = seed_images(client, dataset.id, "/", ["p.jpg"],
                         data_for=lambda n: sized_jpeg(300_000, seed=22))["p.jpg"]
    m.refresh()
    assert (m.path / "p.jpg").read_bytes() == second[1], "stale page cache served"


def test_gio_and_find_browse_the_mount(client, dataset, mount):
    seed_images(client, dataset.id, "/a/b", ["x.png", "y.png"])
    m = mount(dataset.name)
    env = dict(os.environ, GIO_USE_VFS="local")
    out = subprocess.run(["gio", "list", "-a", "standard::size", str(m.path / "a" / "b")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(line.split("\t")[0] for line in out.stdout.splitlines()) == ["x.png", "y.png"]
    info = subprocess.run(["gio", "info", str(m.path / "a" / "b" / "x.png")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert info.returncode == 0 and "standard::size:" in info.stdout
    found = subprocess.run(["find", str(m.path), "-name", "*.png"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert sorted(Path(p).name for p in found) == ["x.png", "y.png"]
    du = subprocess.run(["du", "-s", str(m.path)], capture_output=True, text=True)
    assert du.returncode == 0


def test_mtime_is_the_creation_time(client, dataset, mount):
    made = seed_images(client, dataset.id, "/", ["t.png"])
    m = mount(dataset.name, "--read-only")
    created = made["t.png"][0].created_ts
    assert abs(os.stat(m.path / "t.png").st_mtime - created) < 1e-3
    assert abs(os.stat(m.path).st_mtime - dataset_created(dataset)) < 1e-3


def dataset_created(dataset) -> float:  # type: ignore[no-untyped-def]
    from pictofs.model import parse_timestamp

    value = parse_timestamp(dataset.created_at)
    assert value is not None
    return value


# ------------------------------------------------------------------------------ read-ahead
#
# The fault proxy records every request with its path, so these tests count the bytes
# requests of each image exactly. The read-ahead decides in the open that triggers it and
# logs "read-ahead: fetching <path>" there (the mounts run with -v), so once the reading
# tool has exited, the log tells for certain whether a read-ahead was started.


@pytest.fixture()
def proxy(server):  # type: ignore[no-untyped-def]
    from faultproxy import FaultProxy

    with FaultProxy(upstream=server.base_url, seed=1) as p:
        yield p


def bytes_requests(proxy, image_id: str) -> int:  # type: ignore[no-untyped-def]
    """How many bytes requests of ``image_id`` the proxy has seen."""
    return proxy.stats.count("GET", f"^/api/v1/developer/images/{image_id}$")


def wait_until_cached(cache_dir: Path, image_id: str, timeout: float = 30) -> None:
    """Wait until the cache holds ``image_id`` complete (its data file is in place)."""
    deadline = time.monotonic() + timeout
    while not any(cache_dir.glob(f"*/data/{image_id}")):
        assert time.monotonic() < deadline, f"image {image_id} never reached the cache"
        time.sleep(0.02)


def seed_sequence(client, dataset, folder: str, count: int,  # type: ignore[no-untyped-def]
                  size: int = 300_000) -> dict[str, tuple]:  # type: ignore[type-arg]
    return seed_images(client, dataset.id, folder, [f"p{i}.jpg" for i in range(count)],
                       data_for=lambda n: sized_jpeg(size, seed=int(n[1:-4])))


def cat(*paths: Path) -> bytes:
    return subprocess.run(["cat", *map(str, paths)], capture_output=True, check=True,
                          timeout=60).stdout


def test_reading_a_folder_in_name_order_fetches_the_next_image_ahead(client, dataset, mount,
                                                                      proxy):
    made = seed_sequence(client, dataset, "/seq", 5)
    ids = {name: image.id for name, (image, _data) in made.items()}
    m = mount(dataset.name, "--prefetch", "1", base_url=proxy.url)
    folder = m.path / "seq"
    os.listdir(folder)  # the listing the read-ahead goes by (it never asks for one)
    # the folder's first image starts a pass (p1 is fetched while p0 is read), and each
    # next image in name order keeps it going: p2 is fetched while p1 is read (p1 in place
    # before its open, so that no wait for it deepens the pass)
    assert cat(folder / "p0.jpg") == made["p0.jpg"][1]
    assert "read-ahead: fetching /seq/p1.jpg" in m.log()
    wait_until_cached(m.cache_dir, ids["p1.jpg"])
    assert cat(folder / "p1.jpg") == made["p1.jpg"][1]
    assert "read-ahead: fetching /seq/p2.jpg" in m.log()
    wait_until_cached(m.cache_dir, ids["p2.jpg"])
    assert {n: bytes_requests(proxy, i) for n, i in ids.items()} == {
        "p0.jpg": 1, "p1.jpg": 1, "p2.jpg": 1, "p3.jpg": 0, "p4.jpg": 0}
    # the image fetched ahead is served from the cache, without another request; and the
    # pass goes on across processes: opening p2 after p1 was read fetches p3, and so on
    hits = m.status()["cache"][0]["hits"]
    assert cat(folder / "p2.jpg") == made["p2.jpg"][1]
    assert m.status()["cache"][0]["hits"] == hits + 1
    wait_until_cached(m.cache_dir, ids["p3.jpg"])
    assert cat(folder / "p3.jpg") == made["p3.jpg"][1]
    wait_until_cached(m.cache_dir, ids["p4.jpg"])
    assert cat(folder / "p4.jpg") == made["p4.jpg"][1]
    assert {n: bytes_requests(proxy, i) for n, i in ids.items()} == {n: 1 for n in ids}
    fetched = [line.split("read-ahead: fetching ")[1].split()[0]
               for line in m.log().splitlines() if "read-ahead: fetching" in line]
    assert fetched == ["/seq/p1.jpg", "/seq/p2.jpg", "/seq/p3.jpg", "/seq/p4.jpg"]


def test_read_ahead_depth_two_fetches_the_next_two(client, dataset, mount, proxy):
    made = seed_sequence(client, dataset, "/seq", 5)
    ids = {name: image.id for name, (image, _data) in made.items()}
    m = mount(dataset.name, "--prefetch", "2", base_url=proxy.url)
    folder = m.path / "seq"
    os.listdir(folder)
    cat(folder / "p0.jpg")  # the first image: p1 and p2 are fetched ahead
    for name in ("p1.jpg", "p2.jpg"):  # (in place before p1's open: no wait deepens it)
        wait_until_cached(m.cache_dir, ids[name])
    cat(folder / "p1.jpg")  # the pass goes on: p2 (cached) and p3
    wait_until_cached(m.cache_dir, ids["p3.jpg"])
    assert {n: bytes_requests(proxy, i) for n, i in ids.items()} == {
        "p0.jpg": 1, "p1.jpg": 1, "p2.jpg": 1, "p3.jpg": 1, "p4.jpg": 0}


def test_random_access_and_header_reads_fetch_only_what_follows_the_first_image(
        client, dataset, mount, proxy):
    """Out-of-order whole reads and header reads in name order start no pass; the one thing
    fetched ahead is what an open of a folder's first image fetches (where a pass in name
    order would start): the next ``--prefetch`` images."""
    made = seed_sequence(client, dataset, "/seq", 5)
    ids = {name: image.id for name, (image, _data) in made.items()}
    headers = seed_sequence(client, dataset, "/hdr", 6)
    m = mount(dataset.name, "--prefetch", "2", base_url=proxy.url)
    os.listdir(m.path / "seq")
    os.listdir(m.path / "hdr")
    # whole files, out of order (backwards included): each image once, for its reader or
    # fetched ahead of it (p1 and p2, after the first image)
    for name in ("p3.jpg", "p0.jpg", "p2.jpg", "p1.jpg", "p4.jpg"):
        assert cat(m.path / "seq" / name) == made[name][1]
    # `file *` and thumbnailers read only the start of each file, in name order; p5 is
    # left alone, so a read-ahead after p2 would show as a request for it
    for name in ("p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg"):
        with open(m.path / "hdr" / name, "rb") as handle:
            assert handle.read(1000) == headers[name][1][:1000]
    fetched = [line.split("read-ahead: fetching ")[1].split()[0]
               for line in m.log().splitlines() if "read-ahead: fetching" in line]
    assert fetched == ["/seq/p1.jpg", "/seq/p2.jpg", "/hdr/p1.jpg", "/hdr/p2.jpg"]
    proxy.wait_idle()
    assert {n: bytes_requests(proxy, i) for n, i in ids.items()} == {n: 1 for n in ids}
    assert bytes_requests(proxy, headers["p5.jpg"][0].id) == 0


def test_prefetch_0_fetches_nothing_ahead(client, dataset, mount, proxy):
    made = seed_sequence(client, dataset, "/seq", 4)
    ids = {name: image.id for name, (image, _data) in made.items()}
    m = mount(dataset.name, "--prefetch", "0", base_url=proxy.url)
    folder = m.path / "seq"
    os.listdir(folder)
    assert cat(folder / "p0.jpg", folder / "p1.jpg", folder / "p2.jpg") == b"".join(
        made[f"p{i}.jpg"][1] for i in range(3))
    proxy.wait_idle()
    assert "read-ahead" not in m.log()
    assert {n: bytes_requests(proxy, i) for n, i in ids.items()} == {
        "p0.jpg": 1, "p1.jpg": 1, "p2.jpg": 1, "p3.jpg": 0}


def test_read_ahead_into_a_cache_full_of_open_images_is_skipped(client, dataset, mount, proxy):
    """The cap is 2.5 MB; p0 and p1 (1 MB each) are held open, so their entries cannot be
    evicted: p2 would take the cache over its cap, so it is not fetched ahead."""
    made = seed_sequence(client, dataset, "/seq", 3, size=1024 * 1024)
    ids = {name: image.id for name, (image, _data) in made.items()}
    m = mount(dataset.name, "--prefetch", "1", "--cache-size", "2500K", base_url=proxy.url)
    folder = m.path / "seq"
    os.listdir(folder)
    with open(folder / "p0.jpg", "rb") as first:
        assert first.read() == made["p0.jpg"][1]
        second = open(folder / "p1.jpg", "rb")  # the open after p0 was read triggers
        assert second.read() == made["p1.jpg"][1]
        deadline = time.monotonic() + 30
        while f"not fetching image {ids['p2.jpg']}" not in m.log():
            assert bytes_requests(proxy, ids["p2.jpg"]) == 0, "p2 was fetched ahead"
            assert time.monotonic() < deadline, "the read-ahead never decided about p2"
            time.sleep(0.02)
        second.close()
    assert "the cache is full of images in use" in m.log()
    proxy.wait_idle()
    assert bytes_requests(proxy, ids["p2.jpg"]) == 0
    assert cat(folder / "p2.jpg") == made["p2.jpg"][1]  # read on demand, as without
    assert bytes_requests(proxy, ids["p2.jpg"]) == 1


def test_a_folder_read_in_an_order_of_its_own_is_swept_once_and_within_budget(
        client, dataset, mount, proxy):
    """Four threads read a folder of 40 in a shuffled order, as a data loader's workers do:
    once 16 were read, the mount fetches the others ahead too, and no image is downloaded
    twice (a reader shares the sweep's download or finds the image cached). A program that
    reads 20 of another folder's 40, in an order of its own, and stops, has had no more
    images fetched ahead than it read."""
    loader = seed_sequence(client, dataset, "/loader", 40, size=60_000)
    sample = seed_sequence(client, dataset, "/sample", 40, size=60_000)
    m = mount(dataset.name, "--prefetch", "1", base_url=proxy.url)
    names = sorted(loader)  # the mount's order (by code point): p0, p1, p10, ...
    order = random.Random(11).sample(names, len(names))
    os.listdir(m.path / "loader")  # the loader indexes its files first
    errors: list[BaseException] = []

    def worker(share: list[str]) -> None:
        try:
            for name in share:
                assert (m.path / "loader" / name).read_bytes() == loader[name][1], name
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(order[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    proxy.wait_idle()
    assert {n: bytes_requests(proxy, loader[n][0].id) for n in names} == {n: 1 for n in names}
    assert "read-ahead: sweeping /loader" in m.log()

    os.listdir(m.path / "sample")
    read = sorted(sample)[::-2][:20]  # never the name right after the last one read
    for name in read:
        assert (m.path / "sample" / name).read_bytes() == sample[name][1], name
    proxy.wait_idle()
    requested = {n for n, (image, _data) in sample.items() if bytes_requests(proxy, image.id)}
    assert all(bytes_requests(proxy, sample[n][0].id) == 1 for n in requested)
    assert set(read) <= requested
    assert 0 < len(requested - set(read)) <= len(read), sorted(requested - set(read))


def test_read_ahead_stays_under_the_cache_cap(client, dataset, mount, proxy):
    """A sequential pass through more than the cache holds: whatever is fetched ahead
    evicts only what an insert may, every image is downloaded once, and the cache ends
    under its cap."""
    made = seed_sequence(client, dataset, "/seq", 6, size=1024 * 1024)
    ids = {name: image.id for name, (image, _data) in made.items()}
    m = mount(dataset.name, "--prefetch", "2", "--cache-size", "2500K", base_url=proxy.url)
    folder = m.path / "seq"
    os.listdir(folder)
    names = sorted(ids)
    assert cat(*(folder / n for n in names)) == b"".join(made[n][1] for n in names)
    proxy.wait_idle()
    assert {n: bytes_requests(proxy, i) for n, i in ids.items()} == {n: 1 for n in ids}
    m.umount()  # every download ended and committed (or not) before the daemon exits
    data = [p for p in m.cache_dir.glob("*/data/*")]
    assert sum(p.stat().st_size for p in data) <= 2_500 * 1024
