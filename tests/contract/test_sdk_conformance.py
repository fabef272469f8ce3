"""The official Pictograph SDK, unchanged, against ``pictofs serve``.

The SDK (``import pictograph``, the version pinned in the test extras) is configured the way its
users configure it, through ``PICTOGRAPH_API_KEY`` and ``PICTOGRAPH_BASE_URL``, set explicitly
here on top of the session's isolated ``HOME``/``XDG_*``. The calls covered: dataset create /
get by name and by id / list / iter, the three-step image upload, image list (with folder and
filename filters), image get by filename and by id, download, delete (archive and permanent),
``upload_from_directory``, and the mapping of 401 / 404 / 409 to the SDK's exceptions.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from imagegen import jpeg_bytes, png_bytes

pictograph = pytest.importorskip("pictograph")

# The official SDK against the reference server only. Against the hosted profile the SDK
# 1.69.146 itself fails where the hosted service is known to differ (docs/server.md): it does
# not follow the 307 of an image's bytes (httpx follows no redirect unless asked), and it
# takes a name collision's 400 for a validation error. pictofs handles both.
pytestmark = pytest.mark.profiles("reference")
from pictograph import Client as SdkClient  # noqa: E402
from pictograph.exceptions import AuthError, ConflictError, NotFoundError  # noqa: E402
from pictograph.models.dataset import Dataset as SdkDataset  # noqa: E402
from pictograph.models.image import Image as SdkImage  # noqa: E402

Uploaded = dict[str, tuple[SdkImage, bytes]]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def sdk(server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[SdkClient]:
    """An SDK client configured only through its environment variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PICTOGRAPH_API_KEY", server.key)
    monkeypatch.setenv("PICTOGRAPH_BASE_URL", server.base_url)
    monkeypatch.setenv("PICTOGRAPH_MAX_RETRIES", "0")  # a server fault shows at once
    with pictograph.Client() as client:
        yield client
    assert not (home / ".pictograph").exists()  # the SDK wrote no config of its own


@pytest.fixture()
def ds(sdk: SdkClient) -> SdkDataset:
    """A fresh dataset created through the SDK (its name has a space, so it is encoded)."""
    return sdk.datasets.create(unique("sdk set"), description="made by the SDK")


def write(folder: Path, relative: str, data: bytes) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ───────────── datasets ─────────────

def test_client_takes_key_and_base_url_from_the_environment(sdk: SdkClient, server) -> None:
    assert server.base_url in repr(sdk)
    assert isinstance(sdk.datasets.list(), list)


def test_wrong_key_is_an_auth_error(server) -> None:
    with pictograph.Client(api_key="pk_live_not-a-real-key", base_url=server.base_url,
                           max_retries=0) as client:
        with pytest.raises(AuthError):
            client.datasets.list()


def test_dataset_create_get_and_list(sdk: SdkClient, ds: SdkDataset) -> None:
    assert ds.name.startswith("sdk set-")
    assert ds.description == "made by the SDK"
    assert (ds.image_count, ds.total_size, ds.is_archived) == (0, 0, False)
    assert ds.created_at is not None

    by_name = sdk.datasets.get(ds.name)
    by_id = sdk.datasets.get(dataset_id=ds.id)
    assert (by_name.id, by_name.name) == (ds.id, ds.name)
    assert (by_id.id, by_id.name) == (ds.id, ds.name)
    assert by_name.organization_id == ds.organization_id is not None

    assert ds.id in {d.id for d in sdk.datasets.list(limit=1000)}
    assert ds.id in {d.id for d in sdk.datasets.iter(page_size=2).all()}


def test_dataset_classes_round_trip_as_objects(sdk: SdkClient) -> None:
    created = sdk.datasets.create(unique("sdk classes"), annotation_types=["bbox"],
                                  classes=[{"name": "car", "type": "bbox"}])
    fetched = sdk.datasets.get(created.name)
    assert [(c.name, c.type) for c in fetched.classes] == [("car", "bbox")]
    assert fetched.annotation_types == ["bbox"]


def test_dataset_errors(sdk: SdkClient, ds: SdkDataset) -> None:
    with pytest.raises(ConflictError):
        sdk.datasets.create(ds.name)
    with pytest.raises(NotFoundError):
        sdk.datasets.get(unique("no such dataset"))
    with pytest.raises(NotFoundError):
        sdk.datasets.get(dataset_id=str(uuid.uuid4()))


# ───────────── images ─────────────

@pytest.fixture()
def uploaded(sdk: SdkClient, ds: SdkDataset, tmp_path: Path) -> Uploaded:
    """Two images through the SDK's three-step upload: ``a.png`` at the root and
    ``b.jpg`` in ``/cars``; returns {filename: (Image, bytes)}."""
    a, b = png_bytes(seed=21, size=(12, 7)), jpeg_bytes(seed=22, size=(20, 10))
    image_a = sdk.images.upload(ds.name, write(tmp_path, "src/a.png", a))
    image_b = sdk.images.upload(ds.name, write(tmp_path, "src/b.jpg", b), directory_path="/cars")
    return {"a.png": (image_a, a), "b.jpg": (image_b, b)}


def test_upload_returns_the_registered_image(ds: SdkDataset, uploaded: Uploaded) -> None:
    image_a, a = uploaded["a.png"]
    image_b, b = uploaded["b.jpg"]
    assert (image_a.filename, image_a.directory_path, image_a.dataset_id) == ("a.png", "/", ds.id)
    assert (image_a.file_size, image_a.width, image_a.height) == (len(a), 12, 7)
    assert (image_a.content_type, image_a.status, image_a.is_archived) == ("image/png", "new",
                                                                          False)
    assert (image_b.filename, image_b.directory_path) == ("b.jpg", "/cars")
    assert (image_b.file_size, image_b.width, image_b.height) == (len(b), 20, 10)
    assert image_b.content_type == "image/jpeg"


def test_list_and_iter_images(sdk: SdkClient, ds: SdkDataset, uploaded: Uploaded) -> None:
    ids = {name: image.id for name, (image, _) in uploaded.items()}
    assert {i.id for i in sdk.images.list(ds.name)} == set(ids.values())
    assert {i.id for i in sdk.images.iter(ds.name, page_size=1).all()} == set(ids.values())
    assert [i.id for i in sdk.images.list(ds.name, directory_path="/cars")] == [ids["b.jpg"]]
    assert [i.id for i in sdk.images.list(ds.name, directory_path="/")] == [ids["a.png"]]
    assert [i.id for i in sdk.images.list(ds.name, filename="b.jpg")] == [ids["b.jpg"]]
    assert {i.id for i in sdk.images.list(ds.id)} == set(ids.values())  # an id works too
    assert sdk.datasets.get(ds.name).image_count == 2


def test_get_image_by_filename_and_by_id(sdk: SdkClient, ds: SdkDataset,
                                         uploaded: Uploaded) -> None:
    image_a, _ = uploaded["a.png"]
    image_b, _ = uploaded["b.jpg"]
    assert sdk.images.get(ds.name, "a.png").id == image_a.id
    assert sdk.images.get(ds.name, "b.jpg").directory_path == "/cars"  # found in any folder
    by_id = sdk.images.get(ds.name, image_b.id)
    assert (by_id.filename, by_id.directory_path, by_id.dataset_id) == ("b.jpg", "/cars", ds.id)
    with pytest.raises(NotFoundError):
        sdk.images.get(ds.name, "missing.png")


def test_image_id_from_another_dataset_is_not_found(sdk: SdkClient, ds: SdkDataset,
                                                    uploaded: Uploaded) -> None:
    other = sdk.datasets.create(unique("sdk other"))
    image_a, _ = uploaded["a.png"]
    with pytest.raises(NotFoundError):
        sdk.images.get(other.name, image_a.id)


def test_download_by_filename_path_and_id(sdk: SdkClient, ds: SdkDataset, uploaded: Uploaded,
                                          tmp_path: Path) -> None:
    image_a, a = uploaded["a.png"]
    image_b, b = uploaded["b.jpg"]
    out = tmp_path / "out"
    assert sdk.images.download(ds.name, "a.png", out / "a.png").read_bytes() == a
    assert sdk.images.download(ds.name, "cars/b.jpg", out / "b1.jpg").read_bytes() == b
    assert sdk.images.download(ds.name, image_b.id, out / "b2.jpg").read_bytes() == b
    assert sdk.images.download(ds.id, image_a.id, out / "a2.png").read_bytes() == a
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a2.png", "b1.jpg", "b2.jpg"]


def test_delete_archives_then_deletes_permanently(sdk: SdkClient, ds: SdkDataset,
                                                  uploaded: Uploaded) -> None:
    image_a, _ = uploaded["a.png"]
    image_b, _ = uploaded["b.jpg"]

    sdk.images.delete(ds.name, "a.png")
    assert [i.id for i in sdk.images.list(ds.name)] == [image_b.id]
    archived = {i.id: i for i in sdk.images.list(ds.name, include_archived=True)}
    assert archived[image_a.id].is_archived is True
    assert sdk.datasets.get(ds.name).archived_image_count == 1

    sdk.images.delete(ds.name, image_b.id, permanent=True)  # by id, in a subfolder
    assert [i.id for i in sdk.images.list(ds.name, include_archived=True)] == [image_a.id]
    with pytest.raises(NotFoundError):
        sdk.images.get(ds.name, image_b.id)


def test_duplicate_upload_is_a_conflict(sdk: SdkClient, ds: SdkDataset, uploaded: Uploaded,
                                        tmp_path: Path) -> None:
    with pytest.raises(ConflictError):
        sdk.images.upload(ds.name, write(tmp_path, "again/a.png", png_bytes(seed=99)))


# ───────────── upload_from_directory ─────────────

def test_upload_from_directory_creates_the_dataset_and_skips_on_rerun(sdk: SdkClient,
                                                                      tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = {"x.png": png_bytes(seed=31), "cars/a.jpg": jpeg_bytes(seed=32),
             "cars/red/b.png": png_bytes(seed=33), "bikes/c.png": png_bytes(seed=34)}
    for relative, data in files.items():
        write(tree, relative, data)
    write(tree, "notes.txt", b"not an image")
    name = unique("sdk folder")

    report = sdk.images.upload_from_directory(name, tree)

    assert report.failures == []
    assert (report.images_attempted, report.images_uploaded, report.images_skipped) == (4, 4, 0)
    listed = {(i.directory_path, i.filename): i for i in sdk.images.list(name)}
    assert set(listed) == {("/", "x.png"), ("/cars", "a.jpg"), ("/cars", "b.png"),
                           ("/bikes", "c.png")}  # organize_by_class: first level only
    assert listed[("/cars", "b.png")].file_size == len(files["cars/red/b.png"])
    assert sdk.datasets.get(name).image_count == 4

    again = sdk.images.upload_from_directory(name, tree, create_if_missing=False)
    assert again.failures == []
    assert (again.images_uploaded, again.images_skipped) == (0, 4)


def test_upload_from_directory_preserving_structure(sdk: SdkClient, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree, "cars/red/b.png", png_bytes(seed=41))
    write(tree, "cars/d.png", png_bytes(seed=42))
    name = unique("sdk tree")

    report = sdk.images.upload_from_directory(name, tree, preserve_structure=True,
                                              parallel=False)

    assert (report.images_uploaded, report.failures) == (2, [])
    assert {(i.directory_path, i.filename) for i in sdk.images.list(name)} == {
        ("/cars/red", "b.png"), ("/cars", "d.png")}
    downloaded = sdk.images.download(name, "cars/red/b.png", tmp_path / "b.png")
    assert downloaded.read_bytes() == png_bytes(seed=41)


def test_upload_from_directory_into_a_missing_dataset_without_create(sdk: SdkClient,
                                                                     tmp_path: Path) -> None:
    write(tmp_path / "tree", "x.png", png_bytes(seed=51))
    with pytest.raises(NotFoundError):
        sdk.images.upload_from_directory(unique("sdk none"), tmp_path / "tree",
                                         create_if_missing=False)
