"""Every route wrapper of ``pictofs.api`` (the future filesystem layer needs all of them)
against the real reference server."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from clientkit import bulk_fill
from imagegen import png_bytes

from pictofs.api import ConflictError, FolderNotEmptyError, NotFoundError, ValidationError
from pictofs.api import annotations as annotations_api
from pictofs.api import batch
from pictofs.api import datasets as datasets_api
from pictofs.api import folders as folders_api
from pictofs.api import images as images_api
from pictofs.api.transport import Transport
from pictofs.model import Image


@pytest.fixture()
def t(client) -> Transport:  # type: ignore[no-untyped-def]
    return client.transport


def put_and_register(t: Transport, dataset: str, folder: str, name: str, seed: int) -> Image:
    data = png_bytes(seed)
    ticket = images_api.request_upload_url(t, dataset, name, folder, "image/png")
    assert (ticket.filename, ticket.directory_path) == (name, folder)
    assert ticket.expires_in_minutes == 15
    images_api.put_bytes(t, ticket, data, len(data))
    item = images_api.RegisterItem(name, folder, len(data), "image/png")
    return images_api.register(t, dataset, item)


# ---------------------------------------------------------------------- datasets and /me


# Reference only: the pagination block in full (the hosted profile's is checked in
# tests/server/test_profiles.py).
@pytest.mark.profiles("reference")
def test_dataset_routes(t) -> None:
    name = f"routes-{uuid.uuid4().hex[:8]}"
    made = datasets_api.create(t, name, "desc")
    assert datasets_api.get(t, name) == datasets_api.get(t, made.id)
    page = datasets_api.list_page(t, limit=1, offset=0)
    assert len(page.items) == 1 and page.limit == 1 and page.total >= 1
    everything = list(datasets_api.iter_datasets(t, page_size=2))
    assert made.id in {d.id for d in everything}
    assert len(everything) == len({d.id for d in everything})
    with pytest.raises(ConflictError):
        datasets_api.create(t, name)


# Reference only: GET /me is the reference server's own.
@pytest.mark.profiles("reference")
def test_me(t) -> None:
    me = datasets_api.me(t)
    assert set(me) >= {"organization_id", "organization_name", "role", "key_prefix"}
    assert me["role"] == "owner"


# ---------------------------------------------------------------------- folders


def test_folder_routes(t, dataset) -> None:
    made = folders_api.create_folder(t, dataset.id, "/a/b/c")
    assert made.full_path == "/a/b/c" and made.name == "c"
    again = folders_api.create_folder(t, dataset.id, "/a/b/c")  # idempotent
    assert again.id == made.id
    paths = {f.full_path for f in folders_api.list_folders(t, dataset.id)}
    assert {"/a", "/a/b", "/a/b/c"} <= paths
    assert [f.full_path for f in folders_api.list_folders(t, dataset.id, "")] == ["/a"]
    assert [f.full_path for f in folders_api.list_folders(t, dataset.id, "/a")] == ["/a/b"]

    put_and_register(t, dataset.id, "/a/b", "x.png", 1)
    folders_api.rename_folder(t, dataset.id, "/a/b", "renamed")
    moved = images_api.get_metadata_by_path(t, dataset.id, "/a/renamed/x.png")
    assert moved.directory_path == "/a/renamed"
    assert "/a/renamed/c" in {f.full_path for f in folders_api.list_folders(t, dataset.id)}

    folders_api.create_folder(t, dataset.id, "/a/other")
    with pytest.raises(ConflictError):
        folders_api.rename_folder(t, dataset.id, "/a/other", "renamed")
    with pytest.raises(FolderNotEmptyError):
        folders_api.delete_folder(t, dataset.id, "/a/renamed")
    folders_api.delete_folder(t, dataset.id, "/a/other")
    assert "/a/other" not in {f.full_path for f in folders_api.list_folders(t, dataset.id)}
    with pytest.raises(NotFoundError):
        folders_api.delete_folder(t, dataset.id, "/a/other")


def test_folder_names_with_odd_characters(t, dataset) -> None:
    odd = "/ça va/100% #1?"
    folders_api.create_folder(t, dataset.id, odd)
    image = put_and_register(t, dataset.id, odd, "é & ?.png", 2)
    assert image.path == odd + "/é & ?.png"
    assert images_api.get_metadata_by_path(t, dataset.id, image.path).id == image.id
    with images_api.open_bytes_by_path(t, dataset.id, image.path) as stream:
        assert b"".join(stream) == png_bytes(2)


# ---------------------------------------------------------------------- images


def test_three_step_upload_and_reads(t, dataset) -> None:
    image = put_and_register(t, dataset.name, "/", "one.png", 3)
    assert image.width == 8 and image.height == 6  # filled in by the service
    assert images_api.get_metadata(t, image.id) == image
    assert images_api.get_metadata_by_path(t, dataset.name, "/one.png") == image
    for opener in (lambda: images_api.open_bytes(t, image.id),
                   lambda: images_api.open_bytes_by_path(t, dataset.id, "/one.png"),
                   lambda: images_api.open_url(t, image.image_url)):
        with opener() as stream:
            assert stream.content_type == "image/png"
            assert stream.content_length == len(png_bytes(3))
            assert b"".join(stream) == png_bytes(3)


def test_image_urls_are_rebased_on_the_configured_base(t, dataset) -> None:
    image = put_and_register(t, dataset.id, "/", "rebased.png", 4)
    foreign = "https://cdn.example.invalid" + urlsplit(image.image_url).path
    with images_api.open_url(t, foreign) as stream:
        assert b"".join(stream) == png_bytes(4)


# Reference only: the pagination block in full (the hosted profile's is checked in
# tests/server/test_profiles.py).
@pytest.mark.profiles("reference")
def test_list_page_filters(t, dataset) -> None:
    a = put_and_register(t, dataset.id, "/f", "a.png", 5)
    b = put_and_register(t, dataset.id, "/f", "b.png", 6)
    put_and_register(t, dataset.id, "/g", "a.png", 7)
    page = images_api.list_page(t, dataset.id, directory_path="/f")
    assert [i.id for i in page.items] == [b.id, a.id]
    assert page.total == 2 and not page.has_more
    page = images_api.list_page(t, dataset.id, filename="a.png")
    assert {i.directory_path for i in page.items} == {"/f", "/g"}
    page = images_api.list_page(t, dataset.id, limit=1, offset=1)
    assert len(page.items) == 1 and page.has_more and page.total == 3 and page.offset == 1


def test_bulk_upload_and_register(t, dataset) -> None:
    images = bulk_fill(t, dataset.id, 12, folder="/bulk")
    assert [i.filename for i in images] == [f"img{n:05d}.png" for n in range(12)]
    assert all(i.directory_path == "/bulk" for i in images)
    # collisions are not checked when the URLs are handed out, but per file at register
    files = [("new.png", "image/png"), ("img00000.png", "image/png")]
    tickets = images_api.bulk_upload_urls(t, dataset.id, "/bulk", files)
    assert [(k.filename, k.content_type) for k in tickets] == files
    data = png_bytes(99)
    for ticket in tickets:
        images_api.put_bytes(t, ticket, data, len(data))
    result = images_api.bulk_register(t, dataset.id, [
        images_api.RegisterItem(name, "/bulk", len(data), ctype) for name, ctype in files])
    assert [i.filename for i in result.succeeded] == ["new.png"]
    assert [f.filename for f in result.failed] == ["img00000.png"]
    assert result.failed[0].error
    with pytest.raises(ValidationError):  # a name twice in one call
        images_api.bulk_upload_urls(t, dataset.id, "/bulk", [("a.png", "image/png")] * 2)
    with pytest.raises(ValueError):
        images_api.bulk_upload_urls(t, dataset.id, "/", [("x.png", "image/png")] * 501)


def test_delete_by_path(t, dataset) -> None:
    image = put_and_register(t, dataset.id, "/d", "x.png", 8)
    assert "archived" in images_api.delete_by_path(t, dataset.id, "/d/x.png").lower()
    assert images_api.get_metadata(t, image.id).is_archived
    with pytest.raises(NotFoundError):
        images_api.get_metadata_by_path(t, dataset.id, "/d/x.png")
    again = put_and_register(t, dataset.id, "/d", "x.png", 9)  # the name is free again
    message = images_api.delete_by_path(t, dataset.id, "/d/x.png", permanent=True)
    assert "permanently" in message.lower()
    with pytest.raises(NotFoundError):
        images_api.get_metadata(t, again.id)


def test_batch_archive_restore_status(t, dataset) -> None:
    images = bulk_fill(t, dataset.id, 5)
    ids = [i.id for i in images]
    result = batch.delete(t, dataset.id, ids[:2])
    assert (result.processed, result.operation, result.success) == (2, "archived", True)
    restored = batch.restore(t, dataset.id, ids[:2])
    assert restored.processed == 2
    assert not any(images_api.get_metadata(t, i).is_archived for i in ids[:2])
    staged = batch.update(t, dataset.id, ids, status="review")
    assert staged.processed == 5
    assert {images_api.get_metadata(t, i).status for i in ids} == {"review"}
    gone = batch.delete(t, dataset.id, ids[:1], permanent=True)
    assert gone.operation == "deleted"
    missing = batch.delete(t, dataset.id, ids[:1])
    assert not missing.success and missing.failed[0].id == ids[0]
    with pytest.raises(ValueError):
        batch.update(t, dataset.id, ids)


def test_restore_into_a_taken_name_is_a_failure_entry(t, dataset) -> None:
    first = put_and_register(t, dataset.id, "/", "same.png", 10)
    batch.delete(t, dataset.id, [first.id])
    put_and_register(t, dataset.id, "/", "same.png", 11)
    result = batch.restore(t, dataset.id, [first.id])
    assert [f.id for f in result.failed] == [first.id]


def test_batch_move_renames_on_clash(t, dataset) -> None:
    a = put_and_register(t, dataset.id, "/src", "x.png", 12)
    put_and_register(t, dataset.id, "/dst", "x.png", 13)
    result = batch.move(t, dataset.id, [a.id], "/dst")
    assert result.processed == 1 and result.renamed == 1
    moved = images_api.get_metadata(t, a.id)
    assert moved.directory_path == "/dst" and moved.filename == "x-1.png"


def test_split_and_tags(t, dataset) -> None:
    image = put_and_register(t, dataset.id, "/s", "x.png", 14)
    assert images_api.set_split(t, dataset.id, image.path, "train").split == "train"
    assert images_api.set_split(t, dataset.id, image.path, None).split is None
    with pytest.raises(ValidationError):
        images_api.set_split(t, dataset.id, image.path, "holdout")
    assert images_api.bulk_tag(t, dataset.id, [image.id], ["red", "big"]) == 1
    assert set(images_api.get_metadata(t, image.id).tags) == {"red", "big"}
    images_api.bulk_tag(t, dataset.id, [image.id], ["big"], add=False)
    assert images_api.get_metadata(t, image.id).tags == ("red",)


# ---------------------------------------------------------------------- annotations


def test_annotation_routes(t, dataset) -> None:
    image = put_and_register(t, dataset.id, "/ann", "x.png", 15)
    assert annotations_api.get_annotations(t, dataset.id, image.path) == []
    boxes = [{"type": "bbox", "class": "cat", "bbox": [0, 0, 4, 4]},
             {"type": "bbox", "class": "dog", "bbox": [1, 1, 2, 2]}]
    saved = annotations_api.save_annotations(t, dataset.id, image.path, boxes)
    assert (saved["image_id"], saved["previous_count"], saved["new_count"]) == (image.id, 0, 2)
    replaced = annotations_api.save_annotations(t, dataset.name, image.path, boxes[:1])
    assert (replaced["previous_count"], replaced["new_count"]) == (2, 1)
    assert [a["class"] for a in annotations_api.get_annotations(t, dataset.id, image.path)] \
        == ["cat"]
