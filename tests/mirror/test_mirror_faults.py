"""``pictofs mirror --once`` under faults (filesystem §9 "Restart after a crash", §5
"Failures", "Durability"); figures measured here are in ``docs/reliability.md``.

- ``PICTOFS_FAULT=crash:before_upload_url`` over a fresh tree (the bulk path); crashes after
  the PUTs and after the register of fresh files read where they are, then half of them
  rewritten; a file rewritten between its hash and its PUT; and crashes at
  every step of a replace (a file changed locally: ``before_upload_url``, ``after_archive``,
  ``after_put``, ``after_register``); ``test_mirror.py`` has ``after_put``/``after_register``
  over a fresh tree. The next ``--once`` leaves every file once, with its new bytes, and
  every replaced image in the archive.
- The server stopped (SIGTERM) mid-run and started again on the same data and port.
- 500 images through the fault proxy failing a seeded 10% of every request (503, 429 with
  ``Retry-After``, resets, stalls, truncated bodies): exit 0, each image once, same bytes.
  The same run without faults is the baseline of the printed slowdown (never asserted).

``PICTOFS_LONG=1`` runs more images and seeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from harness import free_port, restart_server, start_server, stop_server
from pictofs.api import Client

from .mirrorkit import image_bytes, make_tree, service_images, sha, wait_for, write_image

LONG = os.environ.get("PICTOFS_LONG") == "1"
FAULT_KINDS = ("503", "429", "reset", "stall", "truncate")

# Reference only: the fault proxy sits in front of the API, and on the hosted profile the
# storage PUTs go to the storage host, around it.
pytestmark = [pytest.mark.timeout(1200 if LONG else 240), pytest.mark.profiles("reference")]


def flat(n: int) -> str:
    return ["", "a/", "a/b/", "c/"][n % 4]


def assert_exactly(client, dataset_id: str, tree: dict[str, bytes]  # type: ignore[no-untyped-def]
                   ) -> None:
    """The dataset's live images are exactly the tree's files, once each, with their bytes."""
    images = [i for i in client.images.list(dataset_id) if not i.is_archived]
    paths = Counter(i.path for i in images)
    assert not [p for p, n in paths.items() if n > 1], "duplicates"
    assert set(paths) == {"/" + rel for rel in tree}, "missing or extra images"
    with ThreadPoolExecutor(8) as pool:
        digests = dict(zip((i.path for i in images),
                           pool.map(lambda i: sha(image_bytes(client, i.id)), images)))
    wrong = [p for p, d in digests.items() if d != sha(tree[p[1:]])]
    assert not wrong, f"bytes differ: {wrong[:5]}"


def test_a_crash_before_the_upload_url_resumes_to_one_copy_of_each_file(
        mirror, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    tree = make_tree(root, 40, depth_of=flat)
    crashed = mirror(root, dataset.name, "--once", "--transfers", "2",
                     env={"PICTOFS_FAULT": "crash:before_upload_url:2"}).run()
    assert crashed.returncode == -signal.SIGKILL
    log = (tmp_path / "mirror0.log").read_text()
    assert "fault injection: crashing at before_upload_url" in log
    resumed = mirror(root, dataset.name, "--once").run()
    assert resumed.returncode == 0, resumed.stdout
    assert_exactly(client, dataset.id, tree)
    assert service_images(client, dataset.id, archived=True) == {}


@pytest.mark.parametrize("point", ["after_put", "after_register"])
def test_files_changed_after_a_crash_are_uploaded_with_their_new_bytes(
        point: str, mirror, client, dataset, tmp_path: Path) -> None:
    """Fresh files are uploaded from where they are (no staging copy); the journal records
    each one's size, mtime and sha256. A crash after a batch's PUTs (or its register), then
    half the files rewritten: the next run resumes every entry, finds those files changed
    before sending anything, cancels their entries (an image the crashed run registered is
    archived) and uploads the new bytes. Every file ends on the service once, with its last
    bytes."""
    root = tmp_path / "fresh"
    old_tree = make_tree(root, 24, depth_of=flat)
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    crashed = mirror(root, dataset.name, "--once", "--transfers", "2",
                     env={**state, "PICTOFS_FAULT": f"crash:{point}:1"}).run()
    assert crashed.returncode == -signal.SIGKILL
    staged = [p for p in (tmp_path / "state").rglob("staging/*") if p.is_file()]
    assert staged == [], "fresh files were copied into staging files"
    tree = dict(old_tree)
    for n, rel in enumerate(sorted(old_tree)[::2]):
        time.sleep(0.01)  # a new mtime even on a coarse clock
        tree[rel] = write_image(root / rel, seed=70_000 + n, size=(11, 5))

    resumed = mirror(root, dataset.name, "--once", env=state).run()

    assert resumed.returncode == 0, resumed.stdout
    assert "changed while it was uploaded" in (tmp_path / "mirror1.log").read_text()
    assert_exactly(client, dataset.id, tree)
    archived = [i for i in client.images.list(dataset.id, include_archived=True)
                if i.is_archived]
    for image in archived:  # only what the crashed run registered of the rewritten files
        assert tree[image.path[1:]] != old_tree[image.path[1:]], image.path
        assert image_bytes(client, image.id) == old_tree[image.path[1:]], image.path
    if point == "after_put":
        assert archived == []


def test_a_file_rewritten_while_it_is_uploaded_lands_with_its_last_bytes(
        mirror, server, client, dataset, tmp_path: Path) -> None:
    """A file rewritten after it was hashed and before its PUT: the bytes sent do not match
    what the journal recorded, so they are not registered; the file is looked at again,
    copied into a staging file and sent with its new bytes. Deterministic: the proxy holds
    the first upload-URL call until the file has been rewritten."""
    root = tmp_path / "moving"
    tree = make_tree(root, 6, depth_of=lambda n: "")
    rel = sorted(tree)[0]
    with FaultProxy(server.base_url) as proxy:
        proxy.delay_next(5.0, method="POST", path="upload-url")
        run = mirror(root, dataset.name, "--once", env={"PICTOGRAPH_BASE_URL": proxy.url})
        process = run.spawn(stdout=subprocess.PIPE)
        proxy.wait_for(lambda s: s.count("POST", "upload-url") >= 1, timeout=60)
        time.sleep(0.01)  # a new mtime even on a coarse clock
        tree[rel] = write_image(root / rel, seed=90_000, size=(13, 3))
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    assert f"{rel} changed while it was uploaded" in run.log()
    assert_exactly(client, dataset.id, tree)
    assert service_images(client, dataset.id, archived=True) == {}


@pytest.mark.parametrize("point", ["before_upload_url", "after_archive", "after_put",
                                   "after_register"])
def test_a_crash_during_a_replace_keeps_the_replaced_images(
        point: str, mirror, client, dataset, tmp_path: Path) -> None:
    """Mirror 8 files, change them all locally, crash at the second time a replace reaches
    ``point``, run again: the new bytes are there once each, and every old image is in the
    archive with its old bytes (none lost, none twice)."""
    root = tmp_path / "rep"
    old_tree = make_tree(root, 8, depth_of=lambda n: ["", "x/"][n % 2])
    assert mirror(root, dataset.name, "--once").run().returncode == 0
    old = service_images(client, dataset.id)
    new_tree = {rel: write_image(root / rel, seed=50_000 + n, size=(9, 7))
                for n, rel in enumerate(sorted(old_tree))}

    crashed = mirror(root, dataset.name, "--once", "--transfers", "4",
                     env={"PICTOFS_FAULT": f"crash:{point}:2"}).run()
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout
    resumed = mirror(root, dataset.name, "--once").run()

    assert resumed.returncode == 0, resumed.stdout
    assert_exactly(client, dataset.id, new_tree)
    archived = [i for i in client.images.list(dataset.id, include_archived=True)
                if i.is_archived]
    assert sorted(i.id for i in archived) == sorted(i.id for i in old.values()), (
        "the archive does not hold exactly the replaced images")
    for image in archived:
        assert image_bytes(client, image.id) == old_tree[image.path[1:]], image.path
    again = mirror(root, dataset.name, "--once").run()  # in step: nothing more to do
    assert again.returncode == 0 and again.stdout.startswith("attempted 0, uploaded 0")


def test_a_server_restart_mid_run_lands_every_file_once(mirror, tmp_path: Path) -> None:
    """``--once`` against a server of its own that is stopped (SIGTERM) while uploads are in
    flight and started again on the same data folder and port: the run waits, then finishes
    with every file once. A proxy slows the PUTs down so that the restart falls mid-run."""
    server = start_server(tmp_path / "own-server", tmp_path / "own-server.log", port=free_port())
    handles = [server]
    try:
        client = Client(api_key=server.key, base_url=server.base_url)
        dataset = client.projects.create("restart")
        root = tmp_path / "r"
        tree = make_tree(root, 600 if LONG else 200, depth_of=flat)
        with FaultProxy(server.base_url) as proxy:
            proxy.delay_next(0.05, count=100_000, method="PUT")
            running = mirror(root, dataset.name, "--once", "--transfers", "2",
                             "--retry-max-wait", "1s",
                             env={"PICTOGRAPH_API_KEY": server.key,
                                  "PICTOGRAPH_BASE_URL": proxy.url})
            process = running.spawn(stdout=subprocess.PIPE)
            wait_for(lambda: proxy.stats.count("PUT") >= 20, what="the first PUTs")
            handles.append(restart_server(handles[-1]))
            out, _ = process.communicate(timeout=300)
            injected = proxy.stats.faults
            gaps = [r for r in proxy.stats.responses if r.status == 502 or r.status is None]
        assert set(injected) == {"delay"}  # only delays: the outage came from the restart
        assert gaps, "no request fell into the restart"
        print(f"\nFIGURES mirror server restart: {len(gaps)} requests failed during the "
              f"restart, {len(tree)} files")
        assert process.returncode == 0, (out, running.log()[-3000:])
        assert out.splitlines()[0] == f"attempted {len(tree)}, uploaded {len(tree)}, " \
                                      "skipped 0, failed 0", out
        assert_exactly(client, dataset.id, tree)
        assert service_images(client, dataset.id, archived=True) == {}
    finally:
        for handle in handles:
            stop_server(handle)


SEEDS = [21, 22, 23] if LONG else [21]


@pytest.mark.parametrize("seed", SEEDS)
def test_once_through_10_percent_faults_lands_every_image_once(
        seed: int, mirror, server, client, dataset, tmp_path: Path) -> None:
    count = 2000 if LONG else 500
    root = tmp_path / "many"
    tree = make_tree(root, count, depth_of=lambda n: f"d{n % 5}/")
    clean_dataset = client.projects.create(f"{dataset.name}-clean")
    options = ("--once", "--retry-max-wait", "2s", "--timeout", "10s")
    with FaultProxy(server.base_url, seed=seed) as proxy:
        env = {"PICTOGRAPH_BASE_URL": proxy.url}
        started = time.monotonic()
        clean = mirror(root, clean_dataset.name, *options, env=env).run(timeout=600)
        clean_seconds = time.monotonic() - started
        assert clean.returncode == 0, clean.stdout
        clean_requests = len(proxy.stats.responses)
        proxy.reset_stats()
        proxy.set_random_faults(rate=0.1, kinds=FAULT_KINDS, stall_seconds=1.0, retry_after=1)
        started = time.monotonic()
        result = mirror(root, dataset.name, *options, env=env).run(timeout=600)
        seconds = time.monotonic() - started
        proxy.clear_faults()
        stats = proxy.stats
    faults = stats.faults
    print(f"\nFIGURES mirror faults seed={seed} images={count} rate=0.1 "
          f"requests={len(stats.responses)} faults={sum(faults.values())} by_kind={dict(faults)} "
          f"clean_requests={clean_requests} clean={clean_seconds:.1f}s faulty={seconds:.1f}s "
          f"slowdown={seconds / clean_seconds:.2f}x")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0] == \
        f"attempted {count}, uploaded {count}, skipped 0, failed 0", result.stdout
    assert set(faults) == set(FAULT_KINDS), faults
    assert not stats.errors, stats.errors
    assert_exactly(client, dataset.id, tree)
    assert_exactly(client, clean_dataset.id, tree)
    assert service_images(client, dataset.id, archived=True) == {}
