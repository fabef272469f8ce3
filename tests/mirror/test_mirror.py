"""``pictofs mirror --once`` and restarts, through the real command against the reference
server: the start-up reconcile of a nested tree (with and without ``--organize-by-class``),
what a restart uploads (nothing over an unchanged tree, the changes made while stopped),
crashes after the PUT and after register (``PICTOFS_FAULT``), transient service failures
(the fault proxy), HEIC pairs, the ``--max-delete`` guard, and the exit codes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image as PILImage

from faultproxy import FaultProxy
from pictofs.names import MAX_IMAGE_BYTES

from .mirrorkit import (
    all_paths, image_bytes, make_tree, service_images, sha, upload_calls, wait_for, write_image,
)

pytestmark = pytest.mark.timeout(240)


def nested(n: int) -> str:
    """Folders 0 to 3 levels deep: a/, a/b1/, a/b1/c2/, ..."""
    return ["", f"a{n % 3}/", f"a{n % 3}/b{n % 2}/", f"a{n % 3}/b{n % 2}/c{n % 5}/"][n % 4]


def expected_paths(tree: dict[str, bytes], folder: str = "/", by_class: bool = False
                   ) -> dict[str, str]:
    """Service path → sha256 that mirroring the tree into ``folder`` should produce."""
    prefix = "" if folder == "/" else folder
    out = {}
    for rel, data in tree.items():
        *dirs, name = rel.split("/")
        out["/".join([prefix, *(dirs[:1] if by_class else dirs), name])] = sha(data)
    return out


def test_once_mirrors_a_nested_tree_and_a_restart_uploads_nothing(
        mirror, server, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    tree = make_tree(root, 300, depth_of=nested)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    write_image(root / ".hidden" / "h.png", 1)
    os.symlink(root / "img0000.png", root / "link.png")

    result = mirror(root, dataset.name, "--once").run()

    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0] == "attempted 300, uploaded 300, skipped 2, failed 0"
    assert "skipped link.png: a symbolic link" in result.stdout
    assert "skipped notes.txt: unsupported file type .txt" in result.stdout
    expected = expected_paths(tree)
    images = service_images(client, dataset.id)
    assert set(images) == set(expected)
    assert all_paths(client, dataset.id) == sorted(expected)  # nothing twice or archived
    for path in sorted(expected)[::60]:
        assert sha(image_bytes(client, images[path].id)) == expected[path]

    before = upload_calls(server)
    again = mirror(root, dataset.name, "--once").run()
    assert again.returncode == 0
    assert again.stdout.splitlines()[0] == "attempted 0, uploaded 0, skipped 302, failed 0"
    assert upload_calls(server) == before


def test_once_with_organize_by_class_maps_the_first_level_only(
        mirror, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "classes"
    tree = make_tree(root, 300, depth_of=lambda n: "" if n % 5 == 0 else
                     f"cat{n % 4}/" + ["", f"x{n % 3}/", "x/y/"][(n // 4) % 3])
    assert "cat1/img0001.png" in tree
    write_image(root / "cat1" / "zz" / "img0001.png", 99)  # a second img0001 for /cat1

    result = mirror(root, f"{dataset.name}:/sorted", "--once", "--organize-by-class").run()

    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "attempted 300, uploaded 300, skipped 0, failed 1"
    assert "failed cat1/zz/img0001.png: cat1/img0001.png already goes to /sorted/cat1/" \
           "img0001.png" in result.stdout
    images = service_images(client, dataset.id)
    assert set(images) == set(expected_paths(tree, "/sorted", by_class=True))
    assert {i.directory_path for i in images.values()} == \
        {"/sorted", "/sorted/cat0", "/sorted/cat1", "/sorted/cat2", "/sorted/cat3"}


def test_changes_made_while_stopped_are_caught_at_the_next_start(
        mirror, server, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "p"
    tree = make_tree(root, 12, depth_of=lambda n: ["", "a/", "b/"][n % 3])
    assert mirror(root, dataset.name, "--once").run().returncode == 0
    first = service_images(client, dataset.id)

    new_bytes = write_image(root / "a" / "img0001.png", 500, (9, 9))  # modified
    write_image(root / "added.png", 501)  # added
    (root / "img0000.png").rename(root / "b" / "img0000.png")  # moved to another folder
    (root / "a" / "img0004.png").rename(root / "a" / "renamed.png")  # renamed
    (root / "b" / "img0002.png").unlink()  # deleted
    result = mirror(root, dataset.name, "--once", "--delete").run()

    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[:2] == [
        "attempted 3, uploaded 3, skipped 8, failed 0", "moved 1, renamed 1, archived 1"]
    now = service_images(client, dataset.id)
    assert now["/b/img0000.png"].id == first["/img0000.png"].id  # a server-side move
    assert sha(image_bytes(client, now["/a/img0001.png"].id)) == sha(new_bytes)
    assert "/added.png" in now and "/a/renamed.png" in now
    for gone in ("/img0000.png", "/a/img0004.png", "/b/img0002.png"):
        assert gone not in now
    archived = service_images(client, dataset.id, archived=True)
    assert set(archived) == {"/a/img0001.png", "/a/img0004.png", "/b/img0002.png"}
    assert len(now) == len(tree) + 1 - 1

    before = upload_calls(server)
    assert mirror(root, dataset.name, "--once", "--delete").run().returncode == 0
    assert upload_calls(server) == before


@pytest.mark.parametrize("point", ["after_put", "after_register"])
def test_a_crash_mid_upload_resumes_to_one_copy_of_each_file(
        point: str, mirror, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "c"
    tree = make_tree(root, 40, depth_of=lambda n: ["", "x/"][n % 2])

    crashed = mirror(root, dataset.name, "--once", "--transfers", "2",
                     env={"PICTOFS_FAULT": f"crash:{point}"}).run()
    assert crashed.returncode == -signal.SIGKILL
    resumed = mirror(root, dataset.name, "--once").run()

    assert resumed.returncode == 0, resumed.stdout
    assert all_paths(client, dataset.id) == sorted(expected_paths(tree))
    images = service_images(client, dataset.id)
    for path, digest in expected_paths(tree).items():
        assert sha(image_bytes(client, images[path].id)) == digest


def test_once_exit_codes_and_failures_reported_with_reasons(
        mirror, server, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    write_image(root / "good.png", 1)
    (root / "broken.jpg").write_bytes(b"this is text, not a JPEG")
    with open(root / "huge.jpg", "wb") as big:
        big.truncate(MAX_IMAGE_BYTES + 1)
    (root / "empty.png").write_bytes(b"")

    result = mirror(root, dataset.name, "--once").run()

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "attempted 2, uploaded 1, skipped 1, failed 2"
    assert any(line.startswith("failed broken.jpg: not an image") for line in lines)
    assert any(line.startswith("failed huge.jpg: 52,428,801 bytes is over the 50 MB limit")
               for line in lines)
    assert "skipped empty.png: empty" in result.stdout
    assert set(service_images(client, dataset.id)) == {"/good.png"}

    before = upload_calls(server)
    again = mirror(root, dataset.name, "--once").run()
    assert again.returncode == 1 and "failed huge.jpg" in again.stdout
    assert upload_calls(server) == before  # the local checks refuse them before any call

    (root / "broken.jpg").unlink()
    (root / "huge.jpg").unlink()
    assert mirror(root, dataset.name, "--once").run().returncode == 0


def test_the_max_delete_guard_refuses_then_force_archives(
        mirror, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_tree(root, 6, depth_of=lambda n: "")
    assert mirror(root, dataset.name, "--once").run().returncode == 0
    for n in range(4):
        (root / f"img{n:04d}.png").unlink()

    refused = mirror(root, dataset.name, "--once", "--delete", "--max-delete", "3").run()
    assert refused.returncode == 1
    assert ("refusing to archive 4 images deleted locally (more than --max-delete 3); run "
            "with --force to archive them") in refused.stdout
    assert len(service_images(client, dataset.id)) == 6

    kept = mirror(root, dataset.name, "--once").run()  # without --delete: left alone
    assert kept.returncode == 0 and "kept on the service 4" in kept.stdout

    forced = mirror(root, dataset.name, "--once", "--delete", "--max-delete", "3",
                    "--force").run()
    assert forced.returncode == 0 and "archived 4" in forced.stdout
    assert set(service_images(client, dataset.id)) == {"/img0004.png", "/img0005.png"}


def test_heic_pairs_are_remembered_and_not_sent_again(
        mirror, server, client, dataset, tmp_path: Path) -> None:
    pillow_heif.register_heif_opener()
    root = tmp_path / "phone"
    (root / "cam").mkdir(parents=True)
    out = io.BytesIO()
    PILImage.new("RGB", (32, 24), (200, 10, 10)).save(out, format="HEIF")
    (root / "cam" / "IMG_1.heic").write_bytes(out.getvalue())

    assert mirror(root, dataset.name, "--once").run().returncode == 0
    assert set(service_images(client, dataset.id)) == {"/cam/IMG_1.png"}
    before = upload_calls(server)
    again = mirror(root, dataset.name, "--once").run()
    assert again.returncode == 0 and again.stdout.startswith("attempted 0, uploaded 0")
    assert upload_calls(server) == before


def test_transient_service_failures_are_retried_and_every_file_lands_once(
        mirror, server, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "f"
    tree = make_tree(root, 60, depth_of=lambda n: ["", "x/", "y/"][n % 3])
    with FaultProxy(server.base_url, seed=7) as proxy:
        proxy.set_random_faults(rate=0.2, kinds=("503", "reset", "429"), retry_after=0,
                                path=r"/(images/|storage/)")
        result = mirror(root, dataset.name, "--once", "--retry-max-wait", "0.2",
                        env={"PICTOGRAPH_BASE_URL": proxy.url}).run()
        faults = proxy.stats.faults
    assert sum(faults.values()) > 0
    assert result.returncode == 0, result.stdout
    assert all_paths(client, dataset.id) == sorted(expected_paths(tree))


# Reference only: it waits for the first storage PUT at a proxy in front of the API, which the
# hosted profile's PUTs do not cross.
@pytest.mark.profiles("reference")
def test_a_signal_stops_once_after_the_step_in_flight_and_a_restart_finishes(
        mirror, server, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "s"
    tree = make_tree(root, 30, depth_of=lambda n: "")
    with FaultProxy(server.base_url) as proxy:
        proxy.delay_next(0.5, count=1000, method="PUT")
        running = mirror(root, dataset.name, "--once", "--transfers", "2",
                         env={"PICTOGRAPH_BASE_URL": proxy.url})
        process = running.spawn(stdout=subprocess.PIPE)
        wait_for(lambda: proxy.stats.count("PUT") >= 1, what="the first PUT")
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    assert "SIGINT: finishing the step in flight" in running.log()
    assert out.startswith("attempted 30, uploaded ")
    done = mirror(root, dataset.name, "--once").run()
    assert done.returncode == 0
    assert all_paths(client, dataset.id) == sorted(expected_paths(tree))


def test_user_errors_are_one_line_and_exit_1(mirror, dataset, tmp_path: Path) -> None:
    missing = mirror(tmp_path / "nope", dataset.name, "--once").run()
    assert missing.returncode == 1
    (tmp_path / "here").mkdir()
    no_dataset = mirror(tmp_path / "here", "no-such-dataset-x", "--once").run()
    assert no_dataset.returncode == 1
    log = (tmp_path / "mirror1.log").read_text()
    assert log.strip().splitlines()[-1].startswith("pictofs: no dataset 'no-such-dataset-x'")
    assert "Traceback" not in log


def test_a_target_with_a_bare_colon_names_a_folder_of_the_dataset(
        mirror, client, dataset, tmp_path: Path) -> None:
    """``DS:cams`` is ``DS:/cams`` (as scp and rsync write it), not a dataset named
    ``DS:cams``; a dataset whose name holds a colon is still found by its whole name."""
    root = tmp_path / "cams"
    write_image(root / "front.png", 1)

    result = mirror(root, f"{dataset.name}:cams", "--once").run()

    assert result.returncode == 0, result.stdout
    assert set(service_images(client, dataset.id)) == {"/cams/front.png"}
    colon = client.projects.create(f"{dataset.name}:b")
    whole = mirror(root, colon.name, "--once").run()
    assert whole.returncode == 0, whole.stdout
    assert set(service_images(client, colon.id)) == {"/front.png"}
    missing = mirror(root, "no-such-dataset-y:cams", "--once").run()
    assert missing.returncode == 1
    log = (tmp_path / "mirror2.log").read_text()
    assert log.strip().splitlines()[-1].startswith("pictofs: no dataset 'no-such-dataset-y'")
