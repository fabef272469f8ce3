"""``pictofs mirror`` watching a real folder, with inotify and with the polling observer
(``--poll``): changes while running (add, modify, rename, move between folders, delete with
and without ``--delete``, the ``--max-delete`` guard), a file written slowly over several
seconds, a temp-then-rename save, a restart over an unchanged tree, and stopping on SIGINT
and SIGTERM. The service is polled with a deadline until it shows the expected state."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from imagegen import sized_jpeg

from .mirrorkit import (
    all_paths, image_bytes, make_tree, service_images, sha, upload_calls, wait_for, write_image,
)

pytestmark = pytest.mark.timeout(180)

OBSERVERS = {"inotify": (), "polling": ("--poll",)}


@pytest.fixture(params=sorted(OBSERVERS))
def observer(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return OBSERVERS[request.param]


def slow_write(path: Path, data: bytes, pauses: list[float]) -> None:
    """Write ``data`` in ``len(pauses) + 1`` pieces with these pauses between them, through
    one open file (as a camera import or a download would)."""
    pieces = len(pauses) + 1
    step = -(-len(data) // pieces)
    with open(path, "wb") as out:
        for n in range(pieces):
            out.write(data[n * step:(n + 1) * step])
            out.flush()
            os.fsync(out.fileno())
            if n < len(pauses):
                time.sleep(pauses[n])


def test_changes_while_watching_reach_the_service(
        observer, mirror, server, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "w"
    make_tree(root, 8, depth_of=lambda n: ["a/", "b/"][n % 2])
    assert mirror(root, dataset.name, "--once").run().returncode == 0
    first = service_images(client, dataset.id)
    before = upload_calls(server)
    running = mirror(root, dataset.name, "--settle", "0.5s", *observer).start()
    assert upload_calls(server) == before  # a restart over an unchanged tree sends nothing

    added = write_image(root / "c" / "new.png", 100)
    changed = write_image(root / "a" / "img0000.png", 101, (12, 7))
    (root / "a" / "img0002.png").rename(root / "a" / "renamed.png")
    (root / "b" / "img0001.png").rename(root / "a" / "img0001.png")
    (root / "b" / "img0003.png").unlink()

    def settled() -> dict | None:
        now = service_images(client, dataset.id)
        wanted = {"/c/new.png", "/a/renamed.png", "/a/img0001.png"}
        if not wanted <= set(now) or "/a/img0002.png" in now or "/b/img0001.png" in now:
            return None
        replaced = now.get("/a/img0000.png")  # none while its replace is between steps
        if replaced is None or replaced.id == first["/a/img0000.png"].id:
            return None
        return now

    now = wait_for(settled, what="the changes on the service")
    assert now["/a/img0001.png"].id == first["/b/img0001.png"].id  # moved, not re-uploaded
    assert sha(image_bytes(client, now["/c/new.png"].id)) == sha(added)
    assert sha(image_bytes(client, now["/a/img0000.png"].id)) == sha(changed)
    assert "/b/img0003.png" in now  # deleted locally, left alone without --delete
    wait_for(lambda: "/a/img0002.png" in service_images(client, dataset.id, archived=True),
             what="the renamed file's old image in the archive")
    assert running.stop() == 0
    assert "Traceback" not in running.log()


def test_deletions_with_delete_and_the_max_delete_guard(
        observer, mirror, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_tree(root, 10, depth_of=lambda n: "" if n < 3 else "many/")
    running = mirror(root, dataset.name, "--settle", "0.5s", "--delete", "--max-delete", "4",
                     *observer).start()
    wait_for(lambda: len(service_images(client, dataset.id)) == 10, what="10 images")

    (root / "img0000.png").unlink()
    (root / "img0001.png").unlink()
    wait_for(lambda: set(service_images(client, dataset.id, archived=True)) ==
             {"/img0000.png", "/img0001.png"}, what="two archived images")

    shutil.rmtree(root / "many")  # 7 at once: over --max-delete 4
    wait_for(lambda: "refusing to archive 7 images deleted locally" in running.log(),
             what="the refusal")
    assert len(service_images(client, dataset.id)) == 8
    assert running.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("options, pauses", [
    pytest.param((), [0.3] * 8, id="inotify-pauses-shorter-than-settle"),
    pytest.param((), [0.3, 0.3, 2.5, 0.3], id="inotify-a-pause-longer-than-settle"),
    # polling cannot see that a file is still open (docs/mirror.md): short pauses only
    pytest.param(("--poll",), [0.3] * 8, id="polling-pauses-shorter-than-settle"),
])
def test_a_file_written_slowly_uploads_once_and_complete(
        options: tuple[str, ...], pauses: list[float], mirror, client, dataset,
        tmp_path: Path) -> None:
    root = tmp_path / "slow"
    root.mkdir()
    running = mirror(root, dataset.name, "--settle", "1s", *options).start()
    data = sized_jpeg(300_000, seed=5)

    slow_write(root / "camera.jpg", data, pauses)

    def complete():  # type: ignore[no-untyped-def]
        image = service_images(client, dataset.id).get("/camera.jpg")
        return image if image and sha(image_bytes(client, image.id)) == sha(data) else None

    wait_for(complete, what="the whole camera.jpg on the service")
    # an upload of a part of it would have come first and be in the archive now
    assert all_paths(client, dataset.id) == ["/camera.jpg"]
    assert running.stop() == 0


def test_a_temp_then_rename_save_uploads_once(
        observer, mirror, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "editor"
    old = write_image(root / "photo.png", 1)
    running = mirror(root, dataset.name, "--settle", "0.5s", *observer).start()
    original = wait_for(lambda: service_images(client, dataset.id).get("/photo.png"),
                        what="photo.png")
    new = write_image(root / "sub" / "other.png", 2)  # a folder appears meanwhile too
    temp = root / ".photo.png.XyZ123"
    slow_write(temp, write_image(tmp_path / "scratch.png", 3, (20, 20)), [0.2, 0.2])
    edited = temp.read_bytes()
    temp.rename(root / "photo.png")

    def replaced():  # type: ignore[no-untyped-def]
        image = service_images(client, dataset.id).get("/photo.png")
        return image if image is not None and image.id != original.id else None

    image = wait_for(replaced, what="the saved photo.png")
    assert sha(image_bytes(client, image.id)) == sha(edited) != sha(old)
    wait_for(lambda: "/sub/other.png" in service_images(client, dataset.id), what="other.png")
    assert all_paths(client, dataset.id) == ["/photo.png", "/photo.png", "/sub/other.png"]
    assert len(service_images(client, dataset.id, archived=True)) == 1  # the old photo only
    assert sha(image_bytes(client, service_images(client, dataset.id)["/sub/other.png"].id)
               ) == sha(new)
    assert running.stop() == 0


def test_a_renamed_folder_becomes_one_server_side_move(
        observer, mirror, server, client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "r"
    make_tree(root, 6, depth_of=lambda n: "pets/" if n < 4 else "")
    assert mirror(root, dataset.name, "--once").run().returncode == 0
    before = service_images(client, dataset.id)
    moves = server.calls("POST", "batch/images/move")
    running = mirror(root, dataset.name, "--settle", "0.5s", *observer).start()

    (root / "pets").rename(root / "animals")

    def moved() -> dict | None:
        now = service_images(client, dataset.id)
        return now if {p for p in now if p.startswith("/animals/")} == {
            f"/animals/img000{n}.png" for n in range(4)} else None

    now = wait_for(moved, what="the images under /animals")
    assert {p: i.id for p, i in now.items() if p.startswith("/animals/")} == {
        p.replace("/pets/", "/animals/"): i.id for p, i in before.items()
        if p.startswith("/pets/")}
    assert not any(p.startswith("/pets/") for p in now)
    assert running.stop() == 0
    # one call for the folder (the server books a request just after answering it)
    wait_for(lambda: server.calls("POST", "batch/images/move") > moves, what="the move count")
    assert server.calls("POST", "batch/images/move") - moves == 1
