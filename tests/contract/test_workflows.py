"""``pictofs.workflows.upload_dataset_from_folder`` against the real reference server."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from clientkit import write_png
from PIL import Image as PILImage

from pictofs import imaging
from pictofs.api import ForbiddenError, NotFoundError
from pictofs.names import MAX_IMAGE_BYTES
from pictofs.workflows import UploadReport, upload_dataset_from_folder


def listing(client, dataset_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {image.path: image.file_size for image in client.images.list(dataset_id)}


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """cats/ (with a deeper folder), dogs/, two top-level files, and things to skip."""
    root = tmp_path / "photos"
    write_png(root / "top.png", 1)
    write_png(root / "cats" / "c1.png", 2)
    write_png(root / "cats" / "c2.png", 3)
    write_png(root / "cats" / "kittens" / "k1.png", 4)
    write_png(root / "dogs" / "d1.png", 5)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "cats" / "c1.png~").write_bytes(b"editor backup")
    write_png(root / ".hidden" / "h.png", 6)
    os.symlink(root / "top.png", root / "link.png")
    return root


def test_organize_by_class_maps_first_level_folders(client, dataset, photos: Path) -> None:
    report = upload_dataset_from_folder(client, dataset.name, folder=photos)
    assert isinstance(report, UploadReport)
    assert (report.images_attempted, report.images_uploaded, report.failures) == (5, 5, [])
    assert report.images_skipped == 2  # notes.txt and the symlink
    assert set(listing(client, dataset.id)) == {"/top.png", "/cats/c1.png", "/cats/c2.png",
                                                "/cats/k1.png", "/dogs/d1.png"}
    assert {i.width for i in client.images.list(dataset.id)} == {8}


def test_a_dataset_object_instead_of_its_name_is_a_clear_type_error(client, dataset,
                                                                   photos: Path) -> None:
    """The documented argument is a name or id; the object ``projects.create`` returns is
    refused before any request, with what to pass instead."""
    with pytest.raises(TypeError, match=r"name or id \(a str\), not a Dataset: pass its "
                                        r"\.id \('" + dataset.id):
        upload_dataset_from_folder(client, dataset, folder=photos)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name or id"):
        client.projects.get(123)  # type: ignore[arg-type]


def test_without_organize_by_class_the_whole_path_is_kept(client, dataset, photos: Path) -> None:
    report = upload_dataset_from_folder(client, dataset.id, folder=str(photos),
                                        organize_by_class=False, parallel=False)
    assert report.images_uploaded == 5 and not report.failures
    assert "/cats/kittens/k1.png" in listing(client, dataset.id)


def test_a_second_run_uploads_nothing(client, dataset, server, photos: Path) -> None:
    upload_dataset_from_folder(client, dataset.id, folder=photos)
    registers = server.calls("POST", "bulk-register")
    urls = server.calls("POST", "upload-url")
    again = upload_dataset_from_folder(client, dataset.id, folder=photos)
    assert (again.images_attempted, again.images_uploaded, again.images_skipped) == (0, 0, 7)
    assert server.calls("POST", "bulk-register") == registers
    assert server.calls("POST", "upload-url") == urls


def test_new_files_are_added_and_changed_names_are_failures(client, dataset,
                                                             photos: Path) -> None:
    upload_dataset_from_folder(client, dataset.id, folder=photos)
    write_png(photos / "cats" / "c3.png", 7)
    write_png(photos / "dogs" / "d1.png", 8, size=(20, 20))  # same name, other bytes
    report = upload_dataset_from_folder(client, dataset.id, folder=photos)
    assert report.images_uploaded == 1
    assert [f.path for f in report.failures] == [str(photos / "dogs" / "d1.png")]
    assert "already exists" in report.failures[0].reason
    assert report.images_attempted == report.images_uploaded + len(report.failures)


def test_flattened_name_clashes_and_oversize_files_fail(client, dataset, tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_png(root / "cats" / "a" / "x.png", 1)
    write_png(root / "cats" / "b" / "x.png", 2)
    with open(root / "cats" / "huge.jpg", "wb") as out:
        out.truncate(MAX_IMAGE_BYTES + 1)
    (root / "cats" / "fake.jpg").write_text("text, not a JPEG")
    report = upload_dataset_from_folder(client, dataset.id, folder=root)
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert set(reasons) == {"x.png", "huge.jpg", "fake.jpg"}
    assert "same name" in reasons["x.png"]
    assert "50 MB" in reasons["huge.jpg"]
    assert report.images_uploaded == 1
    assert report.images_attempted == 4
    assert set(listing(client, dataset.id)) == {"/cats/x.png"}


def test_heic_is_converted_and_not_sent_twice(client, dataset, tmp_path: Path) -> None:
    imaging._register_plugins()
    out = io.BytesIO()
    PILImage.new("RGB", (12, 10), (5, 6, 7)).save(out, format="HEIF")
    root = tmp_path / "phone"
    root.mkdir()
    (root / "IMG_1.heic").write_bytes(out.getvalue())
    first = upload_dataset_from_folder(client, dataset.id, folder=root)
    assert first.images_uploaded == 1
    assert set(listing(client, dataset.id)) == {"/IMG_1.png"}
    second = upload_dataset_from_folder(client, dataset.id, folder=root)
    assert (second.images_uploaded, second.images_skipped) == (0, 1)


def test_more_than_one_batch_with_fresh_urls(client, dataset, server, tmp_path: Path) -> None:
    root = tmp_path / "many"
    for n in range(520):
        write_png(root / f"p{n:04d}.png", 100 + n)
    singles = server.calls("POST", "images/upload-url")
    bulk = server.calls("POST", "bulk-upload-url")
    report = upload_dataset_from_folder(client, dataset.id, folder=root, max_workers=16,
                                        url_max_age=0.0)  # every URL counts as old
    assert report.images_uploaded == 520 and not report.failures
    assert server.calls("POST", "bulk-upload-url") - bulk == 2  # 500 + 20
    assert server.calls("POST", "images/upload-url") - singles == 520
    assert len(listing(client, dataset.id)) == 520


def test_missing_dataset_is_not_found(client, photos: Path) -> None:
    with pytest.raises(NotFoundError):
        upload_dataset_from_folder(client, "no-such-dataset", folder=photos)


def test_missing_folder(client, dataset, tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        upload_dataset_from_folder(client, dataset.id, folder=tmp_path / "nope")


def test_viewer_is_refused(server, dataset, photos: Path) -> None:
    from pictofs.api import Client

    with Client(api_key=server.create_key("viewer"), base_url=server.base_url) as viewer:
        with pytest.raises(ForbiddenError):
            upload_dataset_from_folder(viewer, dataset.id, folder=photos)
