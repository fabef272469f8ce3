"""A real folder ``.archive`` at a dataset's root on the service (filesystem §6, "A service
folder named .archive"): the virtual ``.archive/`` keeps its name, and the service's folder
shows as ``.archive~service``, listed in the root and read, written and renamed into like any
folder of the service. In-process against the session's reference server (which makes such a
folder through its folders route); ``tests/fuse/test_service_names.py`` does it through a
real mount.
"""

from __future__ import annotations

import errno

from imagegen import png_bytes
from scenarios import Service, errno_of
from seed import seed_images

from pictofs.api import folders as folders_api

ALIAS = ".archive~service"


def test_root_names_map_one_to_one():
    from pictofs.core.tree.rootnames import SERVICE_ARCHIVE, to_mount, to_service

    assert SERVICE_ARCHIVE == ALIAS
    cases = {"/.archive~service": "/.archive",
             "/.archive~service/x.png": "/.archive/x.png",
             "/.archive~service~service/a": "/.archive~service/a",
             "/.archive~servicex": "/.archive~servicex",
             "/cars/.archive~service": "/cars/.archive~service",  # only at the root
             "/x.png": "/x.png", "/": "/"}
    for mount, service in cases.items():
        assert to_service(mount) == service
        assert to_mount(service) == mount


def test_a_service_folder_named_archive_shows_as_archive_service(
        client, dataset, tree_of):  # type: ignore[no-untyped-def]
    inside = seed_images(client, dataset.id, "/.archive", ["in.png"])
    gone = seed_images(client, dataset.id, "/", ["gone.png"])
    client.images.delete(gone["gone.png"][0].id)
    fs, _vfs = tree_of()
    root = fs.listdir("/")
    assert set(root) == {ALIAS}
    assert root[ALIAS].is_dir and fs.stat("/" + ALIAS).is_dir
    # the virtual archive keeps its name and holds only archived images
    assert set(fs.listdir("/.archive")) == {"gone.png"}
    assert set(fs.listdir("/" + ALIAS)) == {"in.png"}
    assert fs.read_file(f"/{ALIAS}/in.png") == inside["in.png"][1]
    # written into: lands in the service's /.archive (not kept local as a dot-name)
    data = png_bytes(502)
    fs.write_file(f"/{ALIAS}/new.png", data)
    fs.mkdir(f"/{ALIAS}/sub")
    fs.sync()
    live = Service(client, dataset).live()
    assert set(live) == {"/.archive/in.png", "/.archive/new.png"}
    assert live["/.archive/new.png"].file_size == len(data)
    assert "/.archive/sub" in {f.full_path for f in folders_api.list_folders(
        client.transport, dataset.id, "/.archive")}
    assert set(fs.listdir("/" + ALIAS)) == {"in.png", "new.png", "sub"}
    assert fs.read_file(f"/{ALIAS}/new.png") == data
    # moved out and back: a move on the service (same id)
    image_id = live["/.archive/in.png"].id
    fs.rename(f"/{ALIAS}/in.png", "/in.png")
    assert Service(client, dataset).live()["/in.png"].id == image_id
    fs.rename("/in.png", f"/{ALIAS}/in.png")
    assert Service(client, dataset).live()["/.archive/in.png"].id == image_id
    # restored from the virtual archive into the service's folder
    fs.rename("/.archive/gone.png", f"/{ALIAS}/gone.png")
    assert Service(client, dataset).live()["/.archive/gone.png"].id == gone["gone.png"][0].id
    assert set(fs.listdir("/" + ALIAS)) == {"in.png", "new.png", "sub", "gone.png"}
    # archived from it: in the virtual archive under the same name as in the mount
    fs.unlink(f"/{ALIAS}/new.png")
    assert set(fs.listdir("/.archive")) == {ALIAS}
    assert set(fs.listdir(f"/.archive/{ALIAS}")) == {"new.png"}
    assert fs.read_file(f"/.archive/{ALIAS}/new.png") == data
    fs.rename(f"/.archive/{ALIAS}/new.png", f"/{ALIAS}/new.png")  # restored where it was
    assert Service(client, dataset).live()["/.archive/new.png"].id == \
        live["/.archive/new.png"].id
    # the virtual archive stays read-only
    assert errno_of(lambda: fs.write_file("/.archive/x.png", data)) == errno.EROFS
    assert errno_of(lambda: fs.rename(f"/{ALIAS}/in.png", "/.archive/in.png")) == errno.EROFS


def test_a_service_folder_named_like_the_alias_is_not_hidden(
        client, dataset, tree_of):  # type: ignore[no-untyped-def]
    seed_images(client, dataset.id, "/.archive", ["a.png"])
    seed_images(client, dataset.id, "/" + ALIAS, ["b.png"])
    fs, _vfs = tree_of()
    assert set(fs.listdir("/")) == {ALIAS, ALIAS + "~service"}
    assert set(fs.listdir("/" + ALIAS)) == {"a.png"}
    assert set(fs.listdir(f"/{ALIAS}~service")) == {"b.png"}


def test_without_a_service_archive_folder_the_alias_names_nothing(
        client, dataset, tree_of):  # type: ignore[no-untyped-def]
    seed_images(client, dataset.id, "/", ["x.png"])
    fs, _vfs = tree_of()
    assert set(fs.listdir("/")) == {"x.png"}
    assert errno_of(lambda: fs.stat("/" + ALIAS)) == errno.ENOENT
    assert errno_of(lambda: fs.listdir("/" + ALIAS)) == errno.ENOENT


def test_a_replace_that_lands_shows_the_replaced_image_in_the_archive_at_once(
        client, dataset, tree_of):  # type: ignore[no-untyped-def]
    """The archive's listing is kept, and taken back when this mount archives something:
    the replace of a file written over an image (or a file renamed onto one before it
    landed), once registered, shows the old image in ``.archive/`` without a refresh."""
    seed_images(client, dataset.id, "/", ["r.png", "m.png"])
    fs, _vfs = tree_of()
    assert set(fs.listdir("/.archive")) == set()  # listed, and kept
    fs.write_file("/r.png", png_bytes(503))  # written over an image
    fs.write_file("/new.png", png_bytes(504))
    fs.rename("/new.png", "/m.png")  # staged, then renamed onto an image
    fs.sync()
    assert set(fs.listdir("/.archive")) == {"r.png", "m.png"}
    assert set(fs.listdir("/")) == {"r.png", "m.png"}
