"""Each status of the protocol's error table arrives as its typed exception; roles and
organizations are enforced as seen through the client; names are checked on both sides."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from clientkit import write_png
from imagegen import png_bytes

from pictofs import errors as domain
from pictofs.api import (
    AuthError,
    Client,
    ConflictError,
    FolderNotEmptyError,
    ForbiddenError,
    InvalidNameError,
    NotAnImageError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
)
from pictofs.api import folders as folders_api
from pictofs.api import images as images_api
from pictofs.names import MAX_IMAGE_BYTES


@pytest.fixture(scope="module")
def other_org_client(server):  # type: ignore[no-untyped-def]
    org = f"other-{uuid.uuid4().hex[:8]}"
    server.create_org(org)
    with Client(api_key=server.create_key("owner", org=org), base_url=server.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def viewer(server):  # type: ignore[no-untyped-def]
    with Client(api_key=server.create_key("viewer"), base_url=server.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def member(server):  # type: ignore[no-untyped-def]
    with Client(api_key=server.create_key("member"), base_url=server.base_url) as c:
        yield c


@pytest.fixture()
def image(client, dataset, tmp_path: Path):  # type: ignore[no-untyped-def]
    return client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "a.png"),
                                folder_path="/cats")


# ---------------------------------------------------------------------- the status table


def test_400_bad_name_is_a_validation_error(client, dataset) -> None:
    for bad in ("..", "a\x01b.png", "x" * 252 + ".png", "a/b.png"):
        with pytest.raises(ValidationError) as caught:
            images_api.request_upload_url(client.transport, dataset.id, bad, "/", "image/png")
        assert caught.value.status in (400, 422), bad
        assert caught.value.request_id


def test_400_deleting_a_folder_with_images_is_not_empty(client, dataset, image) -> None:
    with pytest.raises(FolderNotEmptyError) as caught:
        folders_api.delete_folder(client.transport, dataset.id, "/cats")
    assert isinstance(caught.value, domain.NotEmpty)
    assert caught.value.status == 400


def test_401_bad_key_is_an_auth_error(server) -> None:
    with Client(api_key="pk_live_notavalidkey", base_url=server.base_url) as bad:
        with pytest.raises(AuthError) as caught:
            bad.projects.list()
    assert caught.value.status == 401
    assert isinstance(caught.value, domain.PermissionDenied)


def test_403_viewer_cannot_upload(viewer, dataset, server, tmp_path: Path) -> None:
    before_puts = server.calls("PUT")
    with pytest.raises(ForbiddenError) as caught:
        viewer.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "v.png"))
    assert caught.value.status == 403
    assert isinstance(caught.value, domain.PermissionDenied)
    assert server.calls("PUT") == before_puts


def test_viewer_reads_but_cannot_change(viewer, client, dataset, image, server,
                                        tmp_path: Path) -> None:
    if server.profile == "hosted":  # no GET /me: the role shows in what is refused below
        assert viewer.me() is None
    else:
        assert viewer.me()["role"] == "viewer"
    assert viewer.images.get(image.id) == image
    assert [i.id for i in viewer.images.list(dataset.id)] == [image.id]
    viewer.images.download(image.id, output_path=tmp_path / "copy.png")
    with pytest.raises(ForbiddenError):
        viewer.images.delete(image.id)
    with pytest.raises(ForbiddenError):
        viewer.projects.create(f"viewer-made-{uuid.uuid4().hex[:6]}")
    assert not client.images.get(image.id).is_archived


def test_member_may_upload_and_delete_permanently(member, dataset, tmp_path: Path) -> None:
    made = member.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "m.png"))
    member.images.delete(made.id, permanent=True)
    with pytest.raises(NotFoundError):
        member.images.get(made.id)


def test_403_tampered_signed_url(client, dataset) -> None:
    ticket = images_api.request_upload_url(client.transport, dataset.id, "t.png", "/", "image/png")
    forged = images_api.UploadTicket(ticket.filename, ticket.directory_path,
                                     ticket.upload_url[:-2] + "xx", "image/png")
    data = png_bytes(1)
    with pytest.raises(ForbiddenError):
        images_api.put_bytes(client.transport, forged, data, len(data))


def test_403_content_type_other_than_signed(client, dataset) -> None:
    ticket = images_api.request_upload_url(client.transport, dataset.id, "t.png", "/", "image/png")
    data = png_bytes(2)
    with pytest.raises(ForbiddenError):
        client.transport.put_signed(ticket.upload_url, data, "image/jpeg", len(data))


def test_404_missing_things(client, dataset) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for call in (lambda: client.images.get(missing),
                 lambda: client.annotations.get(missing),
                 lambda: client.projects.get(f"missing-{uuid.uuid4().hex}"),
                 lambda: list(client.images.list(f"missing-{uuid.uuid4().hex}")),
                 lambda: images_api.get_metadata_by_path(client.transport, dataset.id, "/x.png"),
                 lambda: folders_api.delete_folder(client.transport, dataset.id, "/nope")):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert caught.value.status == 404
        assert isinstance(caught.value, domain.NotFound)


def test_409_name_collision(client, dataset, image) -> None:
    with pytest.raises(ConflictError) as caught:
        images_api.request_upload_url(client.transport, dataset.id, "a.png", "/cats", "image/png")
    assert caught.value.status in (400, 409)
    assert isinstance(caught.value, domain.AlreadyExists)


def test_413_storage_refuses_more_than_50_mb(client, dataset) -> None:
    ticket = images_api.request_upload_url(client.transport, dataset.id, "big.png", "/",
                                           "image/png")
    body = bytes(MAX_IMAGE_BYTES + 1)
    with pytest.raises(PayloadTooLargeError) as caught:
        images_api.put_bytes(client.transport, ticket, body, len(body))
    assert caught.value.status == 413
    assert isinstance(caught.value, domain.TooLarge)


def test_415_unsupported_extension_from_the_service(client, dataset) -> None:
    with pytest.raises(UnsupportedMediaError) as caught:
        images_api.request_upload_url(client.transport, dataset.id, "notes.txt", "/",
                                      "text/plain")
    assert caught.value.status == 415
    assert isinstance(caught.value, domain.Unsupported)


def test_415_bytes_that_are_not_an_image(client, dataset) -> None:
    ticket = images_api.request_upload_url(client.transport, dataset.id, "fake.png", "/",
                                           "image/png")
    data = b"plain text, not a PNG\n" * 10
    images_api.put_bytes(client.transport, ticket, data, len(data))
    item = images_api.RegisterItem("fake.png", "/", len(data), "image/png")
    with pytest.raises(NotAnImageError) as caught:
        images_api.register(client.transport, dataset.id, item)
    assert caught.value.status == 415
    assert isinstance(caught.value, ValidationError)
    assert isinstance(caught.value, domain.NotAnImage)


def test_422_malformed_request(client) -> None:
    with pytest.raises(ValidationError) as caught:
        client.transport.request_json("POST", "/images/upload-url", json={})
    assert caught.value.status in (400, 422)
    assert caught.value.message


# ---------------------------------------------------------------------- organizations


def test_another_organization_sees_nothing(other_org_client, client, dataset, image, server,
                                           tmp_path: Path) -> None:
    other = other_org_client
    if server.profile == "hosted":  # no GET /me: the other key is known by what it cannot see
        assert other.me() is None
    else:
        assert other.me()["organization_id"] != client.me()["organization_id"]
    for call in (lambda: other.images.get(image.id),
                 lambda: other.annotations.get(image.id),
                 lambda: other.images.delete(image.id),
                 lambda: other.images.download(image.id, output_path=tmp_path / "x.png"),
                 lambda: other.projects.get(dataset.id),
                 lambda: other.projects.get(dataset.name),
                 lambda: list(other.images.list(dataset.id)),
                 lambda: other.images.upload(dataset_id=dataset.id,
                                             file_path=write_png(tmp_path / "o.png"))):
        with pytest.raises(NotFoundError):
            call()
    assert dataset.id not in {d.id for d in other.projects.list()}
    assert not client.images.get(image.id).is_archived
    assert not (tmp_path / "x.png").exists()


def test_the_same_dataset_name_in_two_organizations(other_org_client, client, dataset) -> None:
    twin = other_org_client.projects.create(dataset.name)
    assert twin.id != dataset.id
    assert client.projects.get(dataset.name).id == dataset.id
    assert other_org_client.projects.get(dataset.name).id == twin.id


# ---------------------------------------------------------------------- names checked locally


@pytest.mark.parametrize("folder", ["/a/../b", "/./x", "/bad\x01dir"])
def test_bad_folder_names_fail_before_any_request(client, dataset, server, tmp_path: Path,
                                                  folder: str) -> None:
    before = server.calls("POST", "images/upload-url")
    with pytest.raises(InvalidNameError) as caught:
        client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "x.png"),
                             folder_path=folder)
    assert isinstance(caught.value, ValidationError)
    assert isinstance(caught.value, domain.InvalidName)
    assert server.calls("POST", "images/upload-url") == before


def test_bad_file_names_fail_before_any_request(client, dataset, server, tmp_path: Path) -> None:
    path = write_png(tmp_path / "tab\there.png")
    before = server.calls("POST", "images/upload-url")
    with pytest.raises(InvalidNameError):
        client.images.upload(dataset_id=dataset.id, file_path=path)
    assert server.calls("POST", "images/upload-url") == before
