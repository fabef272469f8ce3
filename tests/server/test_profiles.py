"""``pictofs serve --profile hosted`` differs from the reference profile on every point
``docs/server.md`` lists, and shares the behaviours the hosted service and the reference
server have in common. Each difference is asserted on both profiles, so the hosted profile
cannot drift back to the reference server's behaviour unnoticed (nor the other way round).

Both servers are the session's: ``server`` (reference) and ``hosted_server``.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from imagegen import png_bytes

from harness import ServerHandle
from pictofs import model
from pictofs.server.auth import UploadSigner

API = "/api/v1/developer"

# ``server`` is the reference one; the hosted one is the ``hosted_server`` fixture.
pytestmark = pytest.mark.profiles("reference")


class Api:
    """requests bound to one server and its owner key."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.base = server.base_url + API
        self.headers = {"X-API-Key": server.key}

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.base + path, headers={**self.headers, **kw.pop("headers", {})},
                            timeout=10, **kw)

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.base + path, json=body, headers=self.headers, timeout=10)

    def patch(self, path: str, body: Any) -> requests.Response:
        return requests.patch(self.base + path, json=body, headers=self.headers, timeout=10)

    def dataset(self) -> str:
        name = f"profile-{uuid.uuid4().hex[:10]}"
        assert self.post("/datasets/", {"name": name}).status_code == 201
        return name

    def upload(self, dataset: str, folder: str, name: str, seed: int = 0) -> dict[str, Any]:
        data = png_bytes(seed=seed)
        ticket = self.post("/images/upload-url", {
            "dataset": dataset, "filename": name, "directory_path": folder,
            "content_type": "image/png"})
        assert ticket.status_code == 200, ticket.text
        put = requests.put(ticket.json()["data"]["upload_url"], data=data,
                           headers={"Content-Type": "image/png"}, timeout=10)
        assert put.status_code in (200, 201), put.text
        registered = self.post("/images/register", {
            "dataset": dataset, "filename": name, "directory_path": folder,
            "file_size": len(data), "content_type": "image/png", "width": 8, "height": 6})
        assert registered.status_code == 201, registered.text
        return registered.json()["data"]  # type: ignore[no-any-return]


@pytest.fixture()
def ref(server: ServerHandle) -> Api:
    assert server.profile == "reference"
    return Api(server)


@pytest.fixture()
def hosted(hosted_server: ServerHandle) -> Api:
    assert hosted_server.profile == "hosted"
    return Api(hosted_server)


# ---- 1. a duplicate name --------------------------------------------------------------------

def test_a_duplicate_name_is_409_on_reference_and_400_already_exists_on_hosted(
        ref: Api, hosted: Api) -> None:
    for api, status, code in ((ref, 409, "conflict"), (hosted, 400, "bad_request")):
        dataset = api.dataset()
        again = api.post("/datasets/", {"name": dataset})
        assert (again.status_code, again.json()["error"]["code"]) == (status, code)
        assert "already exists" in again.json()["error"]["message"]
        api.upload(dataset, "/a", "x.png")
        clash = api.post("/images/upload-url", {"dataset": dataset, "filename": "x.png",
                                                "directory_path": "/a",
                                                "content_type": "image/png"})
        assert clash.status_code == status and "already exists" in clash.text
        api.post("/directories/", {"dataset": dataset, "directory_path": "/b"})
        rename = api.patch(f"/directories/{dataset}/b/rename", {"new_name": "a"})
        assert rename.status_code == status and "already exists" in rename.text


# ---- 2. GET /me -----------------------------------------------------------------------------

def test_get_me_exists_on_reference_only(ref: Api, hosted: Api) -> None:
    assert ref.get("/me").json()["data"]["role"] == "owner"
    answer = hosted.get("/me")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


# ---- 3. signed upload URLs --------------------------------------------------------------------

def test_upload_urls_point_at_a_storage_host_of_their_own_on_hosted(
        ref: Api, hosted: Api, hosted_server: ServerHandle) -> None:
    api_host = urlsplit(ref.base).netloc
    ticket = ref.post("/images/upload-url", {"dataset": ref.dataset(), "filename": "u.png",
                                             "directory_path": "/", "content_type": "image/png"})
    assert urlsplit(ticket.json()["data"]["upload_url"]).netloc == api_host

    ticket = hosted.post("/images/upload-url", {
        "dataset": hosted.dataset(), "filename": "u.png", "directory_path": "/",
        "content_type": "image/png"})
    url = urlsplit(ticket.json()["data"]["upload_url"])
    api = urlsplit(hosted.base)
    assert hosted_server.storage_url is not None
    assert url.hostname != api.hostname and url.port != api.port
    assert f"{url.scheme}://{url.netloc}" == hosted_server.storage_url
    # The API's own host does not take storage PUTs on the hosted profile.
    on_api = requests.put(hosted_server.base_url + url.path, data=png_bytes(),
                          headers={"Content-Type": "image/png"}, timeout=10)
    assert on_api.status_code == 404


def test_the_hosted_storage_refuses_a_request_that_carries_the_api_key(
        hosted: Api, ref: Api) -> None:
    def put(api: Api, url: str, with_key: bool) -> requests.Response:
        headers = {"Content-Type": "image/png", **(api.headers if with_key else {})}
        return requests.put(url, data=png_bytes(), headers=headers, timeout=10)

    def ticket(api: Api) -> str:
        answer = api.post("/images/upload-url", {"dataset": api.dataset(), "filename": "k.png",
                                                 "directory_path": "/",
                                                 "content_type": "image/png"})
        return answer.json()["data"]["upload_url"]  # type: ignore[no-any-return]

    url = ticket(hosted)
    refused = put(hosted, url, with_key=True)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "key_not_allowed"
    assert put(hosted, url, with_key=False).status_code == 200
    assert put(ref, ticket(ref), with_key=True).status_code == 200  # no such check there


def test_an_expired_upload_url_is_refused_on_hosted(hosted: Api,
                                                    hosted_server: ServerHandle) -> None:
    dataset = hosted.dataset()
    dataset_id = hosted.get(f"/datasets/{dataset}").json()["data"]["id"]
    signer = UploadSigner.for_data_dir(hosted_server.data_dir)
    grant = signer.grant(dataset_id, "/", "late.png", "image/png", ttl=-1)
    put = requests.put(f"{hosted_server.storage_url}/storage/upload/{signer.sign(grant)}",
                       data=png_bytes(), headers={"Content-Type": "image/png"}, timeout=10)
    assert put.status_code == 403 and put.json()["error"]["details"]["reason"] == "expired"


# ---- 4. image bytes by redirect -------------------------------------------------------------

def test_image_bytes_come_by_redirect_to_signed_storage_on_hosted(
        ref: Api, hosted: Api, hosted_server: ServerHandle) -> None:
    dataset = ref.dataset()
    ref.upload(dataset, "/r", "b.png", seed=3)
    direct = ref.get(f"/images/{dataset}/r/b.png", allow_redirects=False)
    assert direct.status_code == 200 and direct.content == png_bytes(seed=3)

    dataset = hosted.dataset()
    image = hosted.upload(dataset, "/r", "b.png", seed=3)
    for path in (f"/images/{dataset}/r/b.png", f"/images/{image['id']}"):
        moved = hosted.get(path, allow_redirects=False)
        assert moved.status_code == 307
        location = moved.headers["Location"]
        assert location.startswith(f"{hosted_server.storage_url}/storage/object/")
        fetched = requests.get(location, timeout=10)
        assert fetched.status_code == 200 and fetched.content == png_bytes(seed=3)
        with_key = requests.get(location, headers=hosted.headers, timeout=10)
        assert with_key.status_code == 400
    tampered = location[:-4] + ("AAAA" if not location.endswith("AAAA") else "BBBB")
    assert requests.get(tampered, timeout=10).status_code == 403


# ---- 5. no Range, no ETag, no checksums -------------------------------------------------------

@pytest.mark.parametrize("which", ["reference", "hosted"])
def test_no_range_no_etag_no_checksum_on_either_profile(ref: Api, hosted: Api,
                                                        which: str) -> None:
    api = ref if which == "reference" else hosted
    dataset = api.dataset()
    image = api.upload(dataset, "/", "r.png", seed=5)
    whole = png_bytes(seed=5)
    asked = {"Range": "bytes=0-9", "If-None-Match": '"anything"'}
    answer = api.get(f"/images/{image['id']}", headers=asked, allow_redirects=False)
    answers = [answer]
    if which == "hosted":  # the redirect is followed without the key, as a client must
        answer = requests.get(answer.headers["Location"], headers=asked, timeout=10)
        answers.append(answer)
    assert answer.status_code == 200 and answer.content == whole
    for each in answers:
        assert not {"etag", "accept-ranges", "content-range"} & {h.lower() for h in each.headers}
    meta = api.get(f"/images/{image['id']}/metadata").json()["data"]
    assert not [k for k in meta if any(word in k.lower()
                                       for word in ("sha", "md5", "checksum", "etag", "hash"))]


# ---- 6. a batch move's clash is renamed -----------------------------------------------------

@pytest.mark.parametrize("which", ["reference", "hosted"])
def test_a_batch_move_renames_a_clash_on_either_profile(ref: Api, hosted: Api,
                                                        which: str) -> None:
    api = ref if which == "reference" else hosted
    dataset = api.dataset()
    moving = api.upload(dataset, "/from", "p.png", seed=1)
    api.upload(dataset, "/to", "p.png", seed=2)
    result = api.post("/batch/images/move", {"dataset_name": dataset,
                                             "image_ids": [moving["id"]],
                                             "target_directory_path": "/to"}).json()
    assert (result["processed"], result["renamed"]) == (1, 1)
    moved = api.get(f"/images/{moving['id']}/metadata").json()["data"]
    assert (moved["directory_path"], moved["filename"]) == ("/to", "p-1.png")


# ---- 7. only the fields the official SDK declares or reads ------------------------------------

def _sdk_fields(cls: type) -> set[str]:
    """The keys a pydantic model of the official SDK takes: field names and aliases."""
    keys: set[str] = set()
    for name, info in cls.model_fields.items():
        keys.add(name)
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        keys.update(str(c) for c in (choices or ([alias] if alias else [])))
    return keys


def test_answers_carry_only_what_the_sdk_declares_on_hosted(ref: Api, hosted: Api) -> None:
    from pictograph.models.dataset import Dataset as SdkDataset
    from pictograph.models.directory import Directory as SdkDirectory
    from pictograph.models.image import Image as SdkImage

    for api in (ref, hosted):
        dataset = api.dataset()
        image = api.upload(dataset, "/f/g", "s.png")
        assert set(image) <= _sdk_fields(SdkImage)
        listed = api.get("/images/", params={"dataset": dataset, "directory_path": "/f/g"}).json()
        assert set(listed["data"][0]) <= _sdk_fields(SdkImage)
        assert set(api.get(f"/datasets/{dataset}").json()["data"]) <= _sdk_fields(SdkDataset)
        folders = api.get(f"/directories/{dataset}").json()
        created = api.post("/directories/", {"dataset": dataset, "directory_path": "/h"}).json()
        for folder in (*folders, created["data"]):
            assert set(folder) <= _sdk_fields(SdkDirectory)
        ticket = api.post("/images/upload-url", {"dataset": dataset, "filename": "t.png",
                                                 "directory_path": "/",
                                                 "content_type": "image/png"}).json()["data"]
        if api is ref:
            assert set(listed["pagination"]) == {"limit", "offset", "total", "has_more"}
            assert {"dataset_id", "full_path"} <= set(folders[0])
            assert {"dataset_id", "full_path"} <= set(created["data"])
            assert set(ticket) == {"filename", "directory_path", "upload_url",
                                   "expires_in_minutes"}
        else:
            assert listed["pagination"] == {"has_more": False}
            assert "project_id" in folders[0] and "dataset_id" not in folders[0]
            assert "full_path" in folders[0]
            assert "directory_path" in created["data"] and "full_path" not in created["data"]
            assert set(ticket) == {"upload_url"}


def test_every_field_pictofs_reads_is_one_the_sdk_declares() -> None:
    """pictofs's wire objects read no key the official SDK's models do not declare (and
    where the SDK has two wire shapes, pictofs takes both: tested above on the hosted
    profile)."""
    from pictograph.models.dataset import Dataset as SdkDataset
    from pictograph.models.directory import Directory as SdkDirectory
    from pictograph.models.image import Image as SdkImage

    pairs = ((model.Image, SdkImage), (model.Dataset, SdkDataset), (model.Folder, SdkDirectory))
    for ours, theirs in pairs:
        read = {f.name for f in dataclasses.fields(ours)}
        assert read <= _sdk_fields(theirs), (ours.__name__, read - _sdk_fields(theirs))
    folder = model.Folder.from_json({"id": "f", "project_id": "d", "name": "x",
                                     "directory_path": "/x"})
    assert (folder.dataset_id, folder.full_path) == ("d", "/x")
