"""Names and paths from the service that the mount cannot show as they are (filesystem §1,
"Names the mount cannot show"): an image or folder whose name is not one path segment
(``../../x.png``, ``sub/x.png``, ``/abs.png``, ``..``, empty) is skipped with one log line
per name, counted in ``pictofs status``, and the rest of its folder is listed. In-process
against the session's reference server, which refuses to make such names, so they are
written into its database (``servicedb``). ``tests/fuse/test_service_names.py`` lists such a
folder through a real mount, where the kernel failed the whole listing with EIO.
"""

from __future__ import annotations

import errno
import logging

from scenarios import errno_of
from seed import seed_images
from servicedb import add_folders, rename_images

BAD_NAMES = ["../../x.png", "sub/x.png", "/abs.png", ""]


def skipped_lines(caplog) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "skipped" in r.getMessage()]


def test_an_image_whose_name_is_not_one_segment_is_skipped_and_the_rest_listed(
        server, client, dataset, tree_of, caplog):  # type: ignore[no-untyped-def]
    made = seed_images(client, dataset.id, "/",
                       ["good.png", *[f"b{i}.png" for i in range(len(BAD_NAMES))]])
    rename_images(server, {made[f"b{i}.png"][0].id: name for i, name in enumerate(BAD_NAMES)})
    fs, vfs = tree_of()
    with caplog.at_level(logging.WARNING, logger="pictofs"):
        assert set(fs.listdir("/")) == {"good.png"}
        assert fs.read_file("/good.png") == made["good.png"][1]
        vfs.refresh()  # listed again: skipped again, not logged again
        assert set(fs.listdir("/")) == {"good.png"}
    lines = skipped_lines(caplog)
    assert len(lines) == len(BAD_NAMES), lines
    for name in BAD_NAMES:
        assert sum(repr(name) in line for line in lines) == 1, (name, lines)
    assert vfs.status()["skipped_names"] == len(BAD_NAMES)


def test_a_folder_whose_name_is_not_one_segment_is_skipped(server, client, dataset, tree_of,
                                                           caplog):  # type: ignore[no-untyped-def]
    seed_images(client, dataset.id, "/real", ["r.png"])
    seed_images(client, dataset.id, "/", ["top.png"])
    add_folders(server, dataset.id, ["/..", "/.", ""])  # named "..", "." and "" in the root
    fs, vfs = tree_of()
    with caplog.at_level(logging.WARNING, logger="pictofs"):
        assert set(fs.listdir("/")) == {"real", "top.png"}
        assert set(fs.listdir("/real")) == {"r.png"}
    assert len(skipped_lines(caplog)) == 3, skipped_lines(caplog)
    assert vfs.status()["skipped_names"] == 3


def test_a_folder_not_listed_yet_never_answers_with_a_bad_folder_name(
        server, client, dataset, tree_of):  # type: ignore[no-untyped-def]
    """A name looked up before its folder is listed is answered by the folders route alone:
    a folder there whose name is not one segment is skipped the same way."""
    seed_images(client, dataset.id, "/real", ["r.png"])
    add_folders(server, dataset.id, ["/.."])
    fs, vfs = tree_of()
    assert fs.stat("/real").is_dir
    assert errno_of(lambda: fs.stat("/..")) == errno.ENOENT
    assert vfs.status()["skipped_names"] == 1


def test_an_archived_image_with_a_bad_name_is_skipped_in_the_archive(
        server, client, dataset, tree_of):  # type: ignore[no-untyped-def]
    made = seed_images(client, dataset.id, "/", ["kept.png", "bad.png"])
    for name in ("kept.png", "bad.png"):
        client.images.delete(made[name][0].id)
    rename_images(server, {made["bad.png"][0].id: "../bad.png"})
    fs, vfs = tree_of()
    assert set(fs.listdir("/.archive")) == {"kept.png"}
    assert vfs.status()["skipped_names"] == 1
