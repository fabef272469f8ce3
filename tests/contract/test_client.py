"""The product-docs surface of ``pictofs.api.Client`` against the real reference server."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from pathlib import Path

import pytest
from clientkit import write_png
from imagegen import jpeg_bytes, png_bytes
from PIL import Image as PILImage

from pictofs import imaging
from pictofs.api import (
    ApiError,
    Client,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ValidationError,
)
from pictofs.errors import ConfigError, NotAnImage, TooLarge, Unsupported
from pictofs.names import MAX_IMAGE_BYTES


# ---------------------------------------------------------------------- connection


def assert_owner(client: Client, server) -> None:  # type: ignore[no-untyped-def]
    """The client's key works and is the owner's: ``me()`` says so where the service has
    ``GET /me``; elsewhere ``me()`` is None and a member's call (create a dataset) works."""
    if server.profile == "hosted":
        assert client.me() is None
        assert client.projects.create(f"owner-check-{uuid.uuid4().hex[:8]}").id
    else:
        assert client.me()["role"] == "owner"


def test_client_resolves_key_and_url_from_the_environment(server, monkeypatch) -> None:
    monkeypatch.setenv("PICTOGRAPH_API_KEY", server.key)
    monkeypatch.setenv("PICTOGRAPH_BASE_URL", server.base_url)
    with Client() as client:
        assert client.base_url == server.base_url
        assert_owner(client, server)


def test_client_reads_the_config_file(server) -> None:
    config = Path(os.environ["HOME"]) / ".pictograph" / "config.toml"
    config.parent.mkdir(mode=0o700, exist_ok=True)
    config.write_text(f'[default]\napi_key = "{server.key}"\nbase_url = "{server.base_url}"\n')
    config.chmod(0o600)
    try:
        with Client() as client:
            assert_owner(client, server)
    finally:
        config.unlink()


def test_client_reads_a_key_file(server, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(server.key + "\n")
    key_file.chmod(0o600)
    with Client(key_file=key_file, base_url=server.base_url) as client:
        assert_owner(client, server)


def test_no_key_anywhere_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no API key"):
        Client(base_url="http://127.0.0.1:9")


# Reference only: GET /me is the reference server's own.
@pytest.mark.profiles("reference")
def test_me_reports_organization_and_role(client) -> None:
    me = client.me()
    assert me["role"] == "owner"
    assert me["organization_id"]
    assert client.transport is not None


# ---------------------------------------------------------------------- projects


def test_projects_create_get_list(client) -> None:
    created = client.projects.create("proj-surface", description="for the surface test")
    assert created.name == "proj-surface"
    assert created.description == "for the surface test"
    assert client.projects.get("proj-surface") == client.projects.get(created.id)
    assert created.id in {d.id for d in client.projects.list()}
    assert client.datasets is client.projects
    with pytest.raises(ConflictError):
        client.projects.create("proj-surface")
    with pytest.raises(NotFoundError):
        client.projects.get("no-such-project")


def test_dataset_names_are_case_sensitive_and_may_hold_odd_characters(client) -> None:
    odd = client.projects.create("Odd name & ünïcode #1?%")
    assert client.projects.get("Odd name & ünïcode #1?%").id == odd.id
    with pytest.raises(NotFoundError):
        client.projects.get("odd name & ünïcode #1?%")


# ---------------------------------------------------------------------- upload, get


def test_upload_returns_the_registered_image(client, dataset, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(1, size=(32, 24)))
    image = client.images.upload(dataset_id=dataset.id, file_path=path, folder_path="/cars")
    assert (image.filename, image.directory_path, image.path) == ("photo.jpg", "/cars",
                                                                  "/cars/photo.jpg")
    assert (image.width, image.height) == (32, 24)
    assert image.file_size == path.stat().st_size
    assert image.content_type == "image/jpeg"
    assert image.dataset_id == dataset.id
    assert not image.is_archived
    assert client.images.get(image.id) == image


def test_upload_sends_exif_oriented_dimensions(client, dataset, tmp_path: Path) -> None:
    exif = PILImage.Exif()
    exif[imaging.ORIENTATION_TAG] = 6
    out = io.BytesIO()
    PILImage.new("RGB", (40, 20), (9, 9, 9)).save(out, format="JPEG", exif=exif.tobytes())
    path = tmp_path / "rotated.jpg"
    path.write_bytes(out.getvalue())
    image = client.images.upload(dataset_id=dataset.id, file_path=path)
    assert (image.width, image.height) == (20, 40)


def test_folder_paths_are_normalized(client, dataset, tmp_path: Path) -> None:
    path = write_png(tmp_path / "a.png", 2)
    image = client.images.upload(dataset_id=dataset.id, file_path=str(path),
                                 folder_path="animals//cats/")
    assert image.directory_path == "/animals/cats"


def test_same_name_in_the_same_folder_is_a_conflict(client, dataset, tmp_path: Path) -> None:
    first = write_png(tmp_path / "one" / "x.png", 3)
    second = write_png(tmp_path / "two" / "x.png", 4)
    client.images.upload(dataset_id=dataset.id, file_path=first, folder_path="/f")
    with pytest.raises(ConflictError):
        client.images.upload(dataset_id=dataset.id, file_path=second, folder_path="/f")
    other = client.images.upload(dataset_id=dataset.id, file_path=second, folder_path="/g")
    assert other.path == "/g/x.png"


def test_same_idempotency_key_twice_gives_one_image(client, dataset, tmp_path: Path) -> None:
    path = write_png(tmp_path / "once.png", 5)
    first = client.images.upload(dataset_id=dataset.id, file_path=path, idempotency_key="job-1")
    again = client.images.upload(dataset_id=dataset.id, file_path=path, idempotency_key="job-1")
    assert again.id == first.id
    assert [i.id for i in client.images.list(dataset.id)] == [first.id]
    with pytest.raises(ConflictError):  # a new key is a new upload: the name is taken
        client.images.upload(dataset_id=dataset.id, file_path=path, idempotency_key="job-2")


def test_unsupported_extension_fails_before_any_request(client, dataset, server,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    before = server.calls("POST", "images/upload-url")
    with pytest.raises(ValidationError) as caught:
        client.images.upload(dataset_id=dataset.id, file_path=path)
    assert isinstance(caught.value, Unsupported)
    assert caught.value.status == 415
    assert server.calls("POST", "images/upload-url") == before


def test_over_50_mb_fails_before_any_request(client, dataset, server, tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as out:
        out.write(jpeg_bytes(6))
        out.truncate(MAX_IMAGE_BYTES + 1)
    before = server.calls("POST", "images/upload-url")
    with pytest.raises(ApiError) as caught:
        client.images.upload(dataset_id=dataset.id, file_path=path)
    assert isinstance(caught.value, (PayloadTooLargeError, TooLarge))
    assert caught.value.status == 413
    assert server.calls("POST", "images/upload-url") == before


def test_exactly_50_mb_is_accepted(client, dataset, tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    with open(path, "wb") as out:
        out.write(jpeg_bytes(7))
        out.truncate(MAX_IMAGE_BYTES)
    image = client.images.upload(dataset_id=dataset.id, file_path=path)
    assert image.file_size == MAX_IMAGE_BYTES


def test_text_bytes_named_jpg_are_refused_with_415(client, dataset, tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    path.write_text("this is not a JPEG at all\n" * 20)
    with pytest.raises(ValidationError) as caught:
        client.images.upload(dataset_id=dataset.id, file_path=path)
    assert caught.value.status == 415
    assert isinstance(caught.value, NotAnImage)
    assert caught.value.request_id
    assert not list(client.images.list(dataset.id))


def test_heic_is_stored_as_png(client, dataset, tmp_path: Path) -> None:
    imaging._register_plugins()
    out = io.BytesIO()
    PILImage.new("RGB", (24, 16), (200, 10, 10)).save(out, format="HEIF")
    path = tmp_path / "phone.HEIC"
    path.write_bytes(out.getvalue())
    image = client.images.upload(dataset_id=dataset.id, file_path=path, folder_path="/cam")
    assert image.filename == "phone.png"
    assert image.content_type == "image/png"
    assert (image.width, image.height) == (24, 16)
    target = client.images.download(image.id, output_path=tmp_path / "back.png")
    assert imaging.identify(target) == "PNG"


def test_missing_local_file_raises_the_os_error(client, dataset, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client.images.upload(dataset_id=dataset.id, file_path=tmp_path / "nope.png")


def test_upload_into_a_missing_dataset_is_not_found(client, tmp_path: Path) -> None:
    path = write_png(tmp_path / "x.png", 8)
    with pytest.raises(NotFoundError):
        client.images.upload(dataset_id="no-such-dataset", file_path=path)


# ---------------------------------------------------------------------- download


def test_download_writes_the_exact_bytes(client, dataset, tmp_path: Path) -> None:
    data = png_bytes(9, size=(300, 200))
    source = tmp_path / "src.png"
    source.write_bytes(data)
    image = client.images.upload(dataset_id=dataset.id, file_path=source)
    target = tmp_path / "out" / "copy.png"
    target.parent.mkdir()
    assert client.images.download(image.id, output_path=str(target)) == target
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.png"]


def test_download_of_a_missing_image_leaves_nothing(client, tmp_path: Path) -> None:
    target = tmp_path / "missing.png"
    with pytest.raises(NotFoundError):
        client.images.download("00000000-0000-0000-0000-000000000000", output_path=target)
    assert list(tmp_path.iterdir()) == []


def test_download_into_a_missing_folder_leaves_nothing(client, dataset,
                                                              tmp_path: Path) -> None:
    image = client.images.upload(dataset_id=dataset.id,
                                 file_path=write_png(tmp_path / "src" / "a.png", 10))
    target = tmp_path / "dest" / "a.png"  # the folder does not exist: opening .part fails
    with pytest.raises(FileNotFoundError):
        client.images.download(image.id, output_path=target)
    assert not (tmp_path / "dest").exists()


def test_download_replaces_an_existing_file_atomically(client, dataset, tmp_path: Path) -> None:
    image = client.images.upload(dataset_id=dataset.id,
                                 file_path=write_png(tmp_path / "b.png", 11))
    target = tmp_path / "existing.png"
    target.write_bytes(b"old content")
    client.images.download(image.id, output_path=target)
    assert target.read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not (tmp_path / "existing.png.part").exists()


# ---------------------------------------------------------------------- delete, list


def test_delete_archives_then_permanent_delete_removes(client, dataset, tmp_path: Path) -> None:
    keep = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "k.png", 12))
    gone = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "g.png", 13))
    client.images.delete(gone.id)
    assert client.images.get(gone.id).is_archived
    assert [i.id for i in client.images.list(dataset.id)] == [keep.id]
    assert {i.id for i in client.images.list(dataset.id, include_archived=True)} == {keep.id,
                                                                                     gone.id}
    client.images.delete(gone.id, permanent=True)
    with pytest.raises(NotFoundError):
        client.images.get(gone.id)
    with pytest.raises(NotFoundError):
        client.images.delete(gone.id)


def test_list_filters_by_folder_exactly(client, dataset, tmp_path: Path) -> None:
    root = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "r.png", 14))
    cat = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "c.png", 15),
                               folder_path="/cats")
    deep = client.images.upload(dataset_id=dataset.id,
                                file_path=write_png(tmp_path / "d.png", 16),
                                folder_path="/cats/small")
    assert [i.id for i in client.images.list(dataset.id, folder_path="/")] == [root.id]
    assert [i.id for i in client.images.list(dataset.id, folder_path="cats")] == [cat.id]
    assert [i.id for i in client.images.list(dataset.id, "/cats/small")] == [deep.id]
    assert {i.id for i in client.images.list(dataset.id)} == {root.id, cat.id, deep.id}


def test_list_is_newest_first(client, dataset, tmp_path: Path) -> None:
    ids = [client.images.upload(dataset_id=dataset.id,
                                file_path=write_png(tmp_path / f"n{i}.png", 20 + i)).id
           for i in range(3)]
    assert [i.id for i in client.images.list(dataset.id)] == ids[::-1]


# ---------------------------------------------------------------------- annotations


def test_annotations_of_a_new_image_are_empty(client, dataset, tmp_path: Path) -> None:
    image = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "a.png", 30),
                                 folder_path="/x y")
    assert client.annotations.get(image.id) == []


def test_annotations_read_back_what_was_saved(client, dataset, tmp_path: Path) -> None:
    from pictofs.api.annotations import save_annotations

    image = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "b.png", 31),
                                 folder_path="/ü")
    box = {"type": "bbox", "class": "cat", "bbox": [1, 2, 3, 4]}
    result = save_annotations(client.transport, dataset.id, image.path, [box])
    assert result["new_count"] == 1
    saved = client.annotations.get(image.id)
    assert len(saved) == 1 and saved[0]["class"] == "cat"
    assert client.images.get(image.id).annotation_count == 1


# ---------------------------------------------------------------------- the key stays secret


def test_key_never_appears_in_repr_str_or_logs(server, dataset, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = Client(api_key=server.key, base_url=server.base_url)
    texts = [repr(client), str(client), repr(client.transport), repr(client.images)]
    image = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "s.png", 40))
    client.images.download(image.id, output_path=tmp_path / "s-copy.png")
    list(client.images.list(dataset.id))
    for call in (lambda: client.images.get("no-such-id"),
                 lambda: client.projects.create(dataset.name)):
        with pytest.raises(ApiError) as caught:
            call()
        texts += [repr(caught.value), str(caught.value)]
    wrong = Client(api_key="pk_live_wrongwrongwrong", base_url=server.base_url)
    with pytest.raises(ApiError) as caught:
        wrong.projects.list()
    texts += [repr(wrong), str(caught.value), repr(caught.value)]
    texts += [record.getMessage() for record in caplog.records]
    assert any("GET" in t for t in texts)  # the transport did log at DEBUG
    for text in texts:
        assert server.key not in text
        assert "pk_live_wrongwrongwrong" not in text


def test_signed_url_token_never_appears_in_pictofs_logs(client, dataset, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from pictofs.api import images as images_api

    caplog.set_level(logging.DEBUG, logger="pictofs")
    ticket = images_api.request_upload_url(client.transport, dataset.id, "t.png", "/", "image/png")
    data = png_bytes(41)
    images_api.put_bytes(client.transport, ticket, data, len(data))
    token = ticket.upload_url.rsplit("/", 1)[-1].split("?")[0]
    assert len(token) > 8
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pictofs")]
    assert any("PUT" in m for m in messages)
    assert not any(token in m for m in messages)
    assert ticket.upload_url not in repr(ticket)


# ---------------------------------------------------------------------- arguments


def test_objects_where_a_name_or_id_is_expected_are_type_errors_before_any_request(
        client, dataset, server, tmp_path: Path) -> None:
    """A ``Dataset`` or an ``Image`` passed where its name or id goes is refused with what
    to pass instead, whether the value would travel in the path, the query or a JSON body,
    and nothing is sent."""
    photo = tmp_path / "a.png"
    photo.write_bytes(png_bytes(8))
    image = client.images.upload(dataset.id, photo, folder_path="/t")
    before = server.settled_metrics()
    refused_dataset = (r"a dataset is given by its name or id \(a str\), not a Dataset: pass "
                       r"its \.id \('" + dataset.id)
    refused_image = (r"an image is given by its id \(a str\), not an? Image: pass its "
                     r"\.id \('" + image.id)
    calls = {
        "images.list": (lambda: next(iter(client.images.list(dataset))), refused_dataset),
        "images.upload": (lambda: client.images.upload(dataset, photo), refused_dataset),
        "projects.get": (lambda: client.projects.get(dataset), refused_dataset),
        "images.get": (lambda: client.images.get(image), refused_image),
        "images.download": (lambda: client.images.download(image, tmp_path / "out.png"),
                            refused_image),
        "images.delete": (lambda: client.images.delete(image), refused_image),
    }
    for what, (call, refused) in calls.items():
        with pytest.raises(TypeError, match=refused):
            call()
        assert server.settled_metrics() == before, what
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no .part left behind
    assert client.images.get(image.id).id == image.id  # the image is untouched

