"""Keys, roles, organization isolation, signed upload URLs and name rules of the reference
server."""

from __future__ import annotations

import uuid

import pytest
import requests

from pictofs.errors import ConfigError
from pictofs.server import run
from pictofs.server.auth import UploadSigner


def _token(url: str) -> str:
    return url.rsplit("/", 1)[1]


# ---- keys and roles ------------------------------------------------------------------------

def test_missing_or_unknown_key_is_401(make_api, check_error):
    check_error(make_api(None).get("/datasets/"), 401, "unauthorized")
    check_error(make_api("pk_live_not-a-real-key").get("/datasets/"), 401, "unauthorized")
    check_error(make_api(None).get("/me"), 401)


def test_viewer_reads_but_cannot_write(api, ref_server, make_api, make_png, check_error):
    dataset = api.create_dataset("roles")
    name = dataset["name"]
    image = api.upload(name, "v.png", make_png("viewer"))
    viewer = make_api(run.create_key(ref_server.data_dir, "viewer"))
    assert viewer.get("/me").json()["data"]["role"] == "viewer"
    assert viewer.get("/images/", params={"dataset": name}).status_code == 200
    assert viewer.get(f"/images/{image['id']}").content == make_png("viewer")
    for response in (
        viewer.post("/datasets/", json={"name": "viewer-made"}),
        viewer.upload_url(name, "new.png"),
        viewer.register(name, "v.png", file_size=1),
        viewer.delete(f"/images/{name}/v.png"),
        viewer.delete(f"/images/{name}/v.png", params={"permanent": "true"}),
        viewer.post("/batch/images/delete", json={"dataset_name": name,
                                                  "image_ids": [image["id"]]}),
        viewer.post("/batch/images/move", json={"dataset_name": name, "image_ids": [image["id"]],
                                                "target_directory_path": "/x"}),
        viewer.patch("/batch/images/update", json={"dataset_name": name,
                                                   "image_ids": [image["id"]],
                                                   "updates": {"status": "review"}}),
        viewer.post("/directories/", json={"dataset": name, "directory_path": "/v"}),
        viewer.post(f"/images/{name}/v.png/split", json={"split": "train"}),
        viewer.post("/images/bulk-tag", json={"dataset": name, "image_ids": [image["id"]],
                                              "tags": ["t"]}),
        viewer.post(f"/annotations/{name}/v.png", json={"annotations": []}),
    ):
        check_error(response, 403, "forbidden")
    assert api.get(f"/images/{image['id']}/metadata").json()["data"]["is_archived"] is False


@pytest.mark.parametrize("role", ["member", "admin"])
def test_member_and_admin_can_write(role, ref_server, make_api, make_png):
    writer = make_api(run.create_key(ref_server.data_dir, role))
    dataset = writer.create_dataset(role)
    writer.upload(dataset["name"], "m.png", make_png(role))
    deleted = writer.delete(f"/images/{dataset['name']}/m.png", params={"permanent": "true"})
    assert deleted.status_code == 200


def test_admin_verbs_refuse_bad_input(ref_server):
    with pytest.raises(ConfigError):
        run.create_key(ref_server.data_dir, "emperor")
    with pytest.raises(ConfigError):
        run.create_key(ref_server.data_dir, "viewer", org="no-such-org")
    name = f"org-{uuid.uuid4().hex[:6]}"
    run.create_org(ref_server.data_dir, name)
    with pytest.raises(ConfigError):
        run.create_org(ref_server.data_dir, name)


# ---- organization isolation ----------------------------------------------------------------

def test_other_organization_sees_nothing(api, ref_server, make_api, make_png, check_error):
    dataset = api.create_dataset("mine")
    name, ds_id = dataset["name"], dataset["id"]
    image = api.upload(name, "secret.png", make_png("isolation"), "/f")
    org = f"other-{uuid.uuid4().hex[:6]}"
    run.create_org(ref_server.data_dir, org)
    other = make_api(run.create_key(ref_server.data_dir, "owner", org))
    assert other.get("/me").json()["data"]["organization_name"] == org
    assert name not in [d["name"] for d in other.get("/datasets/").json()["data"]]

    iid = image["id"]
    for ref in (name, ds_id):
        for response in (
            other.get(f"/datasets/{ref}"),
            other.get("/images/", params={"dataset": ref}),
            other.get(f"/images/{ref}/f/secret.png"),
            other.get(f"/images/{ref}/f/secret.png/metadata"),
            other.delete(f"/images/{ref}/f/secret.png"),
            other.delete(f"/images/{ref}/f/secret.png", params={"permanent": "true"}),
            other.post(f"/images/{ref}/f/secret.png/split", json={"split": "train"}),
            other.get(f"/annotations/{ref}/f/secret.png"),
            other.post(f"/annotations/{ref}/f/secret.png", json={"annotations": []}),
            other.get(f"/directories/{ref}"),
            other.post("/directories/", json={"dataset": ref, "directory_path": "/g"}),
            other.patch(f"/directories/{ref}/f/rename", json={"new_name": "h"}),
            other.delete(f"/directories/{ref}/f"),
            other.upload_url(ref, "new.png"),
            other.register(ref, "new.png", file_size=1),
            other.post("/images/bulk-upload-url", json={"dataset": ref, "images": [
                {"filename": "n.png", "directory_path": "/", "content_type": "image/png"}]}),
            other.post("/images/bulk-register", json={"dataset": ref, "images": [
                {"filename": "n.png", "directory_path": "/", "content_type": "image/png"}]}),
            other.post("/images/bulk-tag", json={"dataset": ref, "image_ids": [iid],
                                                 "tags": ["x"]}),
            other.post("/batch/images/delete", json={"dataset_name": ref, "image_ids": [iid]}),
            other.patch("/batch/images/update", json={"dataset_name": ref, "image_ids": [iid],
                                                      "updates": {"status": "complete"}}),
            other.post("/batch/images/move", json={"dataset_name": ref, "image_ids": [iid],
                                                   "target_directory_path": "/"}),
        ):
            check_error(response, 404, "not_found")
    check_error(other.get(f"/images/{iid}"), 404)
    check_error(other.get(f"/images/{iid}/metadata"), 404)

    # Their own dataset with our image ids: per-id failures, our image untouched.
    theirs = other.create_dataset("theirs")
    for response in (
        other.post("/batch/images/delete", json={"dataset_name": theirs["name"],
                                                 "image_ids": [iid], "permanent": True}),
        other.post("/batch/images/move", json={"dataset_name": theirs["name"], "image_ids": [iid],
                                               "target_directory_path": "/stolen"}),
    ):
        body = response.json()
        assert response.status_code == 200 and body["processed"] == 0
        assert body["failed"][0]["id"] == iid
    tagged = other.post("/images/bulk-tag", json={"dataset": theirs["name"], "image_ids": [iid],
                                                  "tags": ["x"]})
    assert tagged.json() == {"data": {"processed": 0}}
    after = api.get(f"/images/{iid}/metadata").json()["data"]
    assert after == image
    # The same dataset name is free in another organization.
    assert other.post("/datasets/", json={"name": name}).status_code == 201
    # An idempotency key is per organization: their request is not answered with ours.
    key = uuid.uuid4().hex
    assert api.post("/datasets/", json={"name": f"k-{key[:6]}"},
                    headers={"Idempotency-Key": key}).status_code == 201
    theirs_too = other.post("/datasets/", json={"name": f"k-{key[:6]}"},
                            headers={"Idempotency-Key": key})
    assert theirs_too.status_code == 201
    assert theirs_too.json()["data"]["organization_id"] != dataset["organization_id"]


# ---- idempotency records -------------------------------------------------------------------

def test_a_refusal_is_never_replayed_to_another_key(api, ref_server, make_api, check_error):
    """A viewer's 403 under an Idempotency-Key was replayed for 24 h to the owner's request
    with that key: records were per organization and stored 403s."""
    viewer = make_api(run.create_key(ref_server.data_dir, "viewer"))
    key = uuid.uuid4().hex
    body = {"name": f"idem-{key[:6]}"}
    check_error(viewer.post("/datasets/", json=body, headers={"Idempotency-Key": key}), 403)
    made = api.post("/datasets/", json=body, headers={"Idempotency-Key": key})
    assert made.status_code == 201, made.text
    assert made.headers.get("Idempotent-Replayed") is None


def test_an_answer_is_never_replayed_to_another_key_or_request(api, ref_server, make_api,
                                                              check_error):
    """The owner's 201 under a key was replayed to another key of the organization sending
    another body; now records are per API key, and a key reused for another request is a
    422, never another request's answer."""
    member = make_api(run.create_key(ref_server.data_dir, "member"))
    key = uuid.uuid4().hex
    first = api.post("/datasets/", json={"name": f"first-{key[:6]}"},
                     headers={"Idempotency-Key": key})
    assert first.status_code == 201
    theirs = member.post("/datasets/", json={"name": f"theirs-{key[:6]}"},
                         headers={"Idempotency-Key": key})
    assert theirs.status_code == 201 and theirs.headers.get("Idempotent-Replayed") is None
    assert theirs.json()["data"]["name"] == f"theirs-{key[:6]}"
    for response in (
        api.post("/datasets/", json={"name": f"other-{key[:6]}"},
                 headers={"Idempotency-Key": key}),
        api.post("/directories/", json={"dataset": f"first-{key[:6]}", "directory_path": "/x"},
                 headers={"Idempotency-Key": key}),
    ):
        error = check_error(response, 422, "idempotency_key_reused")
        assert error["details"] == {"idempotency_key": key}
    names = [d["name"] for d in api.get("/datasets/", params={"limit": 1000}).json()["data"]]
    assert f"other-{key[:6]}" not in names
    assert api.get(f"/directories/{first.json()['data']['name']}").json() == []
    again = api.post("/datasets/", json={"name": f"first-{key[:6]}"},
                     headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()


def test_validation_errors_are_not_stored(api, check_error):
    """A 422 ran nothing: the corrected request with the same key runs."""
    key = uuid.uuid4().hex
    check_error(api.post("/datasets/", json={"nom": "x"}, headers={"Idempotency-Key": key}),
                422, "validation_error")
    fixed = api.post("/datasets/", json={"name": f"fixed-{key[:6]}"},
                     headers={"Idempotency-Key": key})
    assert fixed.status_code == 201, fixed.text


# ---- signed upload URLs --------------------------------------------------------------------

def test_signed_url_tampered_expired_or_wrong_type_is_403(api, dataset, ref_server, make_png,
                                                          check_error):
    name = dataset["name"]
    data = make_png("signed")
    url = api.upload_url(name, "s.png").json()["data"]["upload_url"]
    token = _token(url)
    payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for bad in (url[: -len(token)] + payload + "." + flipped,
                url[: -len(token)] + payload[:-1] + "x." + signature,
                url[: -len(token)] + "garbage"):
        check_error(api.put(bad, data), 403, "forbidden")
    check_error(api.put(url, data, content_type="image/jpeg"), 403, "forbidden")
    no_type = requests.put(url, data=data, timeout=30)
    check_error(no_type, 403)

    signer = UploadSigner.for_data_dir(ref_server.data_dir)
    expired = signer.grant(dataset["id"], "/", "s.png", "image/png", ttl=-5)
    error = check_error(api.put(url[: -len(token)] + signer.sign(expired), data), 403)
    assert "expired" in error["message"]
    # Nothing was stored by the refused PUTs: register has no bytes to take yet.
    assert api.register(name, "s.png", file_size=len(data)).status_code == 400
    assert api.put(url, data).status_code == 200
    assert api.register(name, "s.png", file_size=len(data)).status_code == 201


def test_storage_put_needs_no_api_key_and_sends_none(api, dataset, make_png):
    url = api.upload_url(dataset["name"], "k.png").json()["data"]["upload_url"]
    assert "/storage/upload/" in url
    response = requests.put(url, data=make_png("nokey"), headers={"Content-Type": "image/png"},
                            timeout=30)
    assert response.status_code == 200


# ---- names ---------------------------------------------------------------------------------

BAD_NAMES = ["..", ".", "a/b.png", "nul\x00.png", "bell\x07.png", "del\x7f.png",
             "tab\t.png", ("é" * 126) + ".png"]  # the last one is 256 bytes


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_filenames_are_400(bad, api, dataset, check_error):
    assert len(("é" * 126 + ".png").encode()) == 256
    name = dataset["name"]
    check_error(api.upload_url(name, bad), 400)
    check_error(api.register(name, bad, file_size=1), 400)
    failed = api.post("/images/bulk-register", json={"dataset": name, "images": [
        {"filename": bad, "directory_path": "/", "content_type": "image/png"}]}).json()["data"]
    assert failed["count"] == 0 and failed["failed"][0]["status"] == 400


@pytest.mark.parametrize("bad", BAD_NAMES[:-1] + [("é" * 128)])
def test_bad_folder_names_are_400(bad, api, dataset, check_error):
    name = dataset["name"]
    if "/" not in bad:
        check_error(api.post("/directories/", json={"dataset": name,
                                                    "directory_path": f"/ok/{bad}/x"}), 400)
        check_error(api.upload_url(name, "fine.png", directory=f"/{bad}"), 400)
    api.post("/directories/", json={"dataset": name, "directory_path": "/ok"})
    check_error(api.patch(f"/directories/{name}/ok/rename", json={"new_name": bad}), 400)


def test_longest_name_is_fine(api, dataset, make_png):
    longest = ("é" * 125) + "a.png"  # 255 bytes
    assert len(longest.encode()) == 255
    image = api.upload(dataset["name"], longest, make_png("long"))
    assert image["filename"] == longest
