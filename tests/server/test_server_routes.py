"""Every route of the reference server on its happy path, plus the folder, move, archive and
pagination semantics of protocol §4 and the service routes (healthz, metrics, me)."""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from pictofs.server import run

METRIC_RE = re.compile(r'^pictofs_http_requests_total\{method="(?P<method>[^"]*)",'
                       r'route="(?P<route>[^"]*)",status="(?P<status>\d+)"\} (?P<count>\d+)$')


def metrics(server) -> dict[tuple[str, str, int], int]:
    text = requests.get(server.base_url + "/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = METRIC_RE.match(line)
        assert match, f"malformed metrics line: {line!r}"
        counts[(match["method"], match["route"], int(match["status"]))] = int(match["count"])
    return counts


# ---- service routes ------------------------------------------------------------------------

def test_healthz_needs_no_key_and_carries_a_request_id(ref_server):
    response = requests.get(ref_server.base_url + "/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])


def test_me(api, ref_server):
    data = api.get("/me").json()["data"]
    assert data["organization_name"] == "default"
    assert data["role"] == "owner"
    assert ref_server.key.startswith(data["key_prefix"]) and data["key_prefix"] != ref_server.key


def test_metrics_count_requests_by_route_template(api, dataset, ref_server):
    before = metrics(ref_server)
    for _ in range(3):
        assert api.get("/images/", params={"dataset": dataset["name"]}).status_code == 200
    assert api.get("/images/" + dataset["name"] + "/nope/x.png").status_code == 404
    assert requests.get(ref_server.base_url + "/no/such/route", timeout=10).status_code == 404
    after = metrics(ref_server)

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    assert delta(("GET", "/api/v1/developer/images/", 200)) == 3
    assert delta(("GET", "/api/v1/developer/images/{dataset}/{img_path:path}", 404)) == 1
    assert delta(("GET", "unmatched", 404)) == 1


def test_unknown_route_and_validation_errors_use_the_error_shape(api, check_error):
    check_error(api.get("/no-such-thing"), 404, "not_found")
    error = check_error(api.post("/datasets/", json={"description": "no name"}), 422,
                        "validation_error")
    assert error["details"]["errors"][0]["loc"] == ["body", "name"]
    check_error(api.post("/datasets/", data="{not json",
                         headers={"Content-Type": "application/json"}), 422, "validation_error")
    check_error(api.get("/images/", params={"dataset": "x", "limit": 1001}), 422)


def test_openapi_declares_every_route(ref_server):
    schema = requests.get(ref_server.base_url + "/openapi.json", timeout=10).json()
    paths = schema["paths"]
    for path in ("/api/v1/developer/images/register", "/api/v1/developer/batch/images/move",
                 "/storage/upload/{token}", "/api/v1/developer/me"):
        assert path in paths, path
    register = paths["/api/v1/developer/images/register"]["post"]
    assert "$ref" in str(register["responses"]["201"]["content"])


# ---- datasets ------------------------------------------------------------------------------

def test_datasets_create_get_list(api, check_error):
    name = f"cars-{uuid.uuid4().hex[:6]}"
    created = api.post("/datasets/", json={"name": name, "description": "red ones",
                                            "classes": ["car", {"name": "bus"}]})
    assert created.status_code == 201
    data = created.json()["data"]
    assert data["name"] == name and data["description"] == "red ones"
    assert [c["name"] for c in data["classes"]] == ["car", "bus"]
    assert data["image_count"] == 0 and data["total_size"] == 0
    assert api.get(f"/datasets/{name}").json()["data"]["id"] == data["id"]
    assert api.get(f"/datasets/{data['id']}").json()["data"]["name"] == name
    listing = api.get("/datasets/", params={"limit": 1000}).json()
    assert name in [d["name"] for d in listing["data"]]
    assert listing["pagination"]["total"] >= 1
    check_error(api.post("/datasets/", json={"name": name}), 409, "conflict")
    check_error(api.get("/datasets/no-such-dataset"), 404, "not_found")


def test_dataset_counters_and_embedded_images(api, dataset, make_png):
    first = api.upload(dataset["name"], "a.png", make_png("c1"))
    second = api.upload(dataset["name"], "b.png", make_png("c2"))
    api.delete(f"/images/{dataset['name']}/a.png")
    api.patch("/batch/images/update", json={"dataset_name": dataset["name"],
                                            "image_ids": [second["id"]],
                                            "updates": {"status": "complete"}})
    data = api.get(f"/datasets/{dataset['id']}").json()["data"]
    assert data["image_count"] == 1 and data["archived_image_count"] == 1
    assert data["completed_image_count"] == 1
    assert data["total_size"] == len(make_png("c2"))
    assert first["file_size"] == len(make_png("c1"))
    assert "images" not in data
    embedded = api.get(f"/datasets/{dataset['name']}", params={
        "include_images": "true", "images_limit": 10}).json()["data"]
    assert [i["id"] for i in embedded["images"]] == [second["id"]]


# ---- images: reads -------------------------------------------------------------------------

def test_upload_then_read_by_id_and_by_path(api, dataset, make_png):
    data = make_png("read", size=(3, 2))
    image = api.upload(dataset["name"], "x.png", data, "/cars/red")
    assert image["filename"] == "x.png" and image["directory_path"] == "/cars/red"
    assert (image["width"], image["height"]) == (3, 2)
    assert image["content_type"] == "image/png" and image["file_size"] == len(data)
    assert image["status"] == "new" and image["tags"] == [] and image["is_archived"] is False
    assert image["image_url"].endswith(f"/images/{image['id']}")

    by_id = api.get(f"/images/{image['id']}/metadata").json()["data"]
    by_path = api.get(f"/images/{dataset['name']}/cars/red/x.png/metadata").json()["data"]
    assert by_id == by_path == image

    for path in (f"/images/{image['id']}", f"/images/{dataset['name']}/cars/red/x.png",
                 f"/images/{dataset['id']}/cars/red/x.png"):
        response = api.get(path, headers={"Range": "bytes=0-3"})
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["Content-Length"] == str(len(data))
        assert "Accept-Ranges" not in response.headers and "ETag" not in response.headers
    head = api.request("HEAD", f"/images/{image['id']}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data))


def test_missing_bytes_are_a_500_in_the_error_shape(api, dataset, make_png, ref_server,
                                                    check_error):
    before = ref_server.blob_files()
    image = api.upload(dataset["name"], "lost.png", make_png("lost"))
    (blob,) = ref_server.blob_files() - before
    blob.unlink()
    check_error(api.get(f"/images/{image['id']}"), 500, "blob_missing")


def test_an_encoded_slash_names_nothing(api, make_png, check_error):
    outer = api.create_dataset("slash")
    api.upload(outer["name"], "x.png", make_png("slash"), "/b")
    assert api.get(f"/images/{outer['name']}/b/x.png").status_code == 200
    check_error(api.get(f"/images/{outer['name']}%2Fb/x.png"), 404)
    check_error(api.get(f"/datasets/{outer['name']}%2fb"), 404)
    check_error(api.post("/datasets/", json={"name": "a/b"}), 400, "invalid_name")


def test_list_filters(api, dataset, make_png):
    name = dataset["name"]
    api.upload(name, "a.png", make_png("f1"), "/one")
    api.upload(name, "a.png", make_png("f2"), "/one/two")
    api.upload(name, "b.png", make_png("f3"), "/")
    in_one = api.get("/images/", params={"dataset": name, "directory_path": "/one"}).json()
    assert [(i["directory_path"], i["filename"]) for i in in_one["data"]] == [("/one", "a.png")]
    named = api.get("/images/", params={"dataset": name, "filename": "a.png"}).json()["data"]
    assert sorted(i["directory_path"] for i in named) == ["/one", "/one/two"]
    root = api.get("/images/", params={"dataset": name, "directory_path": "/"}).json()["data"]
    assert [i["filename"] for i in root] == ["b.png"]
    everything = api.get("/images/", params={"dataset": dataset["id"]}).json()
    assert [i["filename"] for i in everything["data"]] == ["b.png", "a.png", "a.png"]
    assert everything["pagination"] == {"limit": 100, "offset": 0, "total": 3,
                                        "has_more": False}


def test_pagination_over_2500_images(api, make_png):
    dataset = api.create_dataset("pages")
    name = dataset["name"]
    registered: list[str] = []
    local = threading.local()  # one session per uploading thread
    for batch in range(5):
        folder = "/p" if batch < 4 else "/p/sub"
        files = [(f"img-{batch}-{i:03d}.png", make_png(f"page-{batch}-{i}")) for i in range(500)]
        urls = api.post("/images/bulk-upload-url", json={"dataset": name, "images": [
            {"filename": f, "directory_path": folder, "content_type": "image/png"}
            for f, _ in files]})
        assert urls.status_code == 200, urls.text
        entries = urls.json()["data"]["upload_urls"]
        assert [e["filename"] for e in entries] == [f for f, _ in files]

        def put(pair):
            entry, (_, data) = pair
            if not hasattr(local, "session"):
                local.session = requests.Session()
            return local.session.put(entry["upload_url"], data=data,
                                     headers={"Content-Type": "image/png"},
                                     timeout=60).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(put, zip(entries, files))) == {200}
        result = api.post("/images/bulk-register", json={"dataset": name, "images": [
            {"filename": f, "directory_path": folder, "file_size": len(d),
             "content_type": "image/png", "width": 1, "height": 1} for f, d in files]})
        assert result.status_code == 200, result.text
        body = result.json()["data"]
        assert body["count"] == 500 and body["failed"] == []
        registered += [i["id"] for i in body["succeeded"]]

    seen: list[dict] = []
    offset = 0
    while True:
        page = api.get("/images/", params={"dataset": name, "limit": 1000,
                                           "offset": offset}).json()
        seen += page["data"]
        offset += len(page["data"])
        assert page["pagination"]["total"] == 2500
        if not page["pagination"]["has_more"]:
            break
    assert len(seen) == 2500 and offset == 2500
    assert [i["id"] for i in seen] == list(reversed(registered))  # newest first
    stamps = [i["created_at"] for i in seen]
    assert stamps == sorted(stamps, reverse=True)
    exact = api.get("/images/", params={"dataset": name, "directory_path": "/p", "limit": 1})
    assert exact.json()["pagination"]["total"] == 2000


def test_a_list_total_follows_every_change_whoever_makes_it(api, dataset, make_png,
                                                           ref_server):
    """The server remembers a listing's total between pages (counting a folder of 100,000
    again for each page was a third of its answer time); any change must show at once,
    made through the API, by another connection or by another process, whichever of the
    server's threads answers. The page's items are what the metadata route answers."""
    import sqlite3
    import time

    name = dataset["name"]
    first = api.upload(name, "a.png", make_png("t1"), "/t")
    api.upload(name, "b.png", make_png("t2"), "/t")

    def totals() -> set[int]:  # several requests, so several of the server's threads
        return {api.get("/images/", params={"dataset": name, "directory_path": "/t",
                                            "limit": 1}).json()["pagination"]["total"]
                for _ in range(8)}

    assert totals() == {2}
    api.upload(name, "c.png", make_png("t3"), "/t")
    assert totals() == {3}
    archived = api.post("/batch/images/delete", json={"dataset_name": name,
                                                      "image_ids": [first["id"]]})
    assert archived.status_code == 200, archived.text
    assert totals() == {2}
    db = sqlite3.connect(ref_server.data_dir / "pictofs.db", timeout=15)
    try:
        with db:  # another process's commit
            db.execute("INSERT INTO images (id, dataset_id, directory_path, filename, "
                       "file_size, content_type, blob, created_at) "
                       "SELECT ?, dataset_id, directory_path, 'd.png', file_size, "
                       "content_type, blob, ? FROM images WHERE id = ?",
                       (str(uuid.uuid4()), time.time(), first["id"]))
    finally:
        db.close()
    assert totals() == {3}
    listing = api.get("/images/", params={"dataset": name, "directory_path": "/t"}).json()
    assert sorted(i["filename"] for i in listing["data"]) == ["b.png", "c.png", "d.png"]
    for item in listing["data"]:
        assert api.get(f"/images/{item['id']}/metadata").json()["data"] == item


# ---- idempotency ---------------------------------------------------------------------------

def test_idempotency_key_replays_the_first_response(api, dataset, make_png, make_api):
    data = make_png("idem")
    url = api.upload_url(dataset["name"], "once.png").json()["data"]["upload_url"]
    assert api.put(url, data).status_code == 200
    key = uuid.uuid4().hex
    body = {"dataset": dataset["name"], "filename": "once.png", "directory_path": "/",
            "file_size": len(data), "content_type": "image/png"}
    first = api.post("/images/register", json=body, headers={"Idempotency-Key": key})
    second = api.post("/images/register", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    listing = api.get("/images/", params={"dataset": dataset["name"]}).json()
    assert listing["pagination"]["total"] == 1
    fresh = api.post("/images/register", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert fresh.status_code == 409
    # Dataset creation too: the replay answers 201 with the same dataset, not a 409. (A key
    # names one request: another request needs another key.)
    create = {"name": f"idem-{uuid.uuid4().hex[:6]}"}
    key = uuid.uuid4().hex
    one = api.post("/datasets/", json=create, headers={"Idempotency-Key": key})
    two = api.post("/datasets/", json=create, headers={"Idempotency-Key": key})
    assert one.status_code == two.status_code == 201 and one.json() == two.json()


# ---- split, tags, annotations --------------------------------------------------------------

def test_split_tags_and_annotations(api, dataset, make_png, check_error):
    name = dataset["name"]
    image = api.upload(name, "s.png", make_png("split"), "/k")
    split = api.post(f"/images/{name}/k/s.png/split", json={"split": "val"})
    assert split.status_code == 200 and split.json()["data"]["split"] == "val"
    assert api.post(f"/images/{name}/k/s.png/split", json={"split": None}).json()[
        "data"]["split"] is None
    check_error(api.post(f"/images/{name}/k/s.png/split", json={"split": "holdout"}), 422)

    tagged = api.post("/images/bulk-tag", json={"dataset": name, "image_ids": [image["id"]],
                                                "tags": ["red", "car"], "add": True})
    assert tagged.json() == {"data": {"processed": 1}}
    api.post("/images/bulk-tag", json={"dataset": name, "image_ids": [image["id"]],
                                       "tags": ["car"], "add": False})
    assert api.get(f"/images/{image['id']}/metadata").json()["data"]["tags"] == ["red"]

    assert api.get(f"/annotations/{name}/k/s.png").json() == {"annotations": []}
    annotations = [{"id": "a", "name": "car", "type": "bbox", "confidence": 0.4,
                    "bounding_box": {"x": 0, "y": 0, "w": 1, "h": 1}},
                   {"id": "b", "name": "car", "type": "bbox", "confidence": 0.9,
                    "bounding_box": {"x": 0, "y": 0, "w": 1, "h": 1}}]
    saved = api.post(f"/annotations/{name}/k/s.png", json={"annotations": annotations}).json()
    assert saved == {"image_id": image["id"], "previous_count": 0, "new_count": 2,
                     "status": "new"}
    assert api.get(f"/annotations/{name}/k/s.png").json() == {"annotations": annotations}
    meta = api.get(f"/images/{image['id']}/metadata").json()["data"]
    assert meta["annotation_count"] == 2 and meta["min_confidence"] == 0.4


def test_batch_update_status(api, dataset, make_png):
    image = api.upload(dataset["name"], "st.png", make_png("status"))
    result = api.patch("/batch/images/update", json={
        "dataset_name": dataset["name"], "image_ids": [image["id"]],
        "updates": {"status": "review"}}).json()
    assert result["success"] is True and result["processed"] == 1 and result["failed"] == []
    assert api.get(f"/images/{image['id']}/metadata").json()["data"]["status"] == "review"


# ---- folders -------------------------------------------------------------------------------

def test_directory_create_list_rename_delete(api, dataset, make_png, check_error):
    name = dataset["name"]
    created = api.post("/directories/", json={"dataset": name, "directory_path": "/a/b/c"})
    assert created.status_code == 201
    folder = created.json()["data"]
    assert folder["full_path"] == "/a/b/c" and folder["name"] == "c"
    again = api.post("/directories/", json={"dataset": name, "directory_path": "a/b/c/"})
    assert again.status_code == 200 and again.json()["data"]["id"] == folder["id"]

    everything = api.get(f"/directories/{name}").json()
    assert isinstance(everything, list)
    assert [d["full_path"] for d in everything] == ["/a", "/a/b", "/a/b/c"]
    by_path = {d["full_path"]: d for d in everything}
    assert by_path["/a/b/c"]["parent_directory_id"] == by_path["/a/b"]["id"]
    assert by_path["/a"]["parent_directory_id"] is None
    top = api.get(f"/directories/{name}", params={"parent_path": ""}).json()
    assert [d["full_path"] for d in top] == ["/a"]
    under_a = api.get(f"/directories/{name}", params={"parent_path": "/a"}).json()
    assert [d["full_path"] for d in under_a] == ["/a/b"]

    image = api.upload(name, "x.png", make_png("dir"), "/a/b/c")
    api.upload(name, "loose.png", make_png("implicit"), "/implicit/deep")
    counted = {d["full_path"]: d for d in api.get(f"/directories/{name}").json()}
    assert counted["/a"]["nested_image_count"] == 1 and counted["/a"]["image_count"] == 0
    assert counted["/a/b/c"]["image_count"] == 1
    assert "/implicit" in counted and counted["/implicit/deep"]["image_count"] == 1

    check_error(api.delete(f"/directories/{name}/a/b"), 400, "not_empty")
    check_error(api.delete(f"/directories/{name}/a/b/c"), 400, "not_empty")
    check_error(api.delete(f"/directories/{name}/nowhere"), 404)
    check_error(api.patch(f"/directories/{name}/nowhere/rename", json={"new_name": "x"}), 404)

    renamed = api.patch(f"/directories/{name}/a/b/rename", json={"new_name": "z"})
    assert renamed.status_code == 200 and renamed.json()["data"]["full_path"] == "/a/z"
    paths = [d["full_path"] for d in api.get(f"/directories/{name}").json()]
    assert "/a/z/c" in paths and "/a/b" not in paths and "/a/b/c" not in paths
    moved = api.get(f"/images/{name}/a/z/c/x.png/metadata").json()["data"]
    assert moved["id"] == image["id"] and moved["directory_path"] == "/a/z/c"
    check_error(api.get(f"/images/{name}/a/b/c/x.png/metadata"), 404)

    api.post("/directories/", json={"dataset": name, "directory_path": "/a/q"})
    check_error(api.patch(f"/directories/{name}/a/z/rename", json={"new_name": "q"}), 409)

    # Archived images do not keep a folder from being deleted; restoring brings it back.
    api.delete(f"/images/{name}/a/z/c/x.png")
    assert api.delete(f"/directories/{name}/a/z/c").status_code == 200
    assert "/a/z/c" not in [d["full_path"] for d in api.get(f"/directories/{name}").json()]
    restored = api.patch("/batch/images/update", json={
        "dataset_name": name, "image_ids": [image["id"]], "updates": {"is_archived": False}})
    assert restored.json()["processed"] == 1
    assert "/a/z/c" in [d["full_path"] for d in api.get(f"/directories/{name}").json()]
    check_error(api.delete(f"/directories/{name}/"), 400)


# ---- move, archive, restore, delete --------------------------------------------------------

def test_batch_move_renames_on_clash(api, dataset, make_png):
    name = dataset["name"]
    target = api.upload(name, "x.png", make_png("m0"), "/dst")
    first = api.upload(name, "x.png", make_png("m1"), "/src")
    second = api.upload(name, "x.png", make_png("m2"), "/other")
    plain = api.upload(name, "y.png", make_png("m3"), "/src")
    result = api.post("/batch/images/move", json={
        "dataset_name": name, "image_ids": [first["id"], second["id"], plain["id"],
                                            str(uuid.uuid4())],
        "target_directory_path": "/dst"}).json()
    assert result["processed"] == 3 and result["renamed"] == 2 and result["success"] is False
    assert result["operation"] == "moved" and len(result["failed"]) == 1
    names = {i["id"]: i["filename"] for i in api.get("/images/", params={
        "dataset": name, "directory_path": "/dst"}).json()["data"]}
    assert names == {target["id"]: "x.png", first["id"]: "x-1.png", second["id"]: "x-2.png",
                     plain["id"]: "y.png"}
    moved = api.get(f"/images/{name}/dst/x-1.png")
    assert moved.content == make_png("m1")


def test_batch_move_with_no_valid_id_creates_no_folder(api, dataset, make_png, make_api,
                                                      ref_server):
    """The probe's move of unknown ids (and of another organization's) created the target."""
    name = dataset["name"]
    org = f"mv-{uuid.uuid4().hex[:6]}"
    run.create_org(ref_server.data_dir, org)
    other = make_api(run.create_key(ref_server.data_dir, "owner", org))
    theirs = other.create_dataset("mv")
    foreign = other.upload(theirs["name"], "f.png", make_png("foreign"))
    for ids in ([], [str(uuid.uuid4())], [foreign["id"], "not-an-id"]):
        result = api.post("/batch/images/move", json={
            "dataset_name": name, "image_ids": ids, "target_directory_path": "/ghost/town"})
        assert result.status_code == 200 and result.json()["processed"] == 0
    assert api.get(f"/directories/{name}").json() == []
    # A move that moves something still makes its target (and parents).
    mine = api.upload(name, "m.png", make_png("moved"))
    assert api.post("/batch/images/move", json={
        "dataset_name": name, "image_ids": [mine["id"]],
        "target_directory_path": "/ghost/town"}).json()["processed"] == 1
    assert [d["full_path"] for d in api.get(f"/directories/{name}").json()] == [
        "/ghost", "/ghost/town"]


def test_archive_then_restore_and_restore_when_name_taken(api, dataset, make_png,
                                                           check_error):
    name = dataset["name"]
    old = api.upload(name, "r.png", make_png("r-old"))
    archived = api.delete(f"/images/{name}/r.png")
    assert archived.json() == {"success": True, "message": "Image archived"}
    assert api.get(f"/images/{old['id']}/metadata").json()["data"]["is_archived"] is True
    check_error(api.get(f"/images/{name}/r.png/metadata"), 404)
    assert api.get(f"/images/{old['id']}").content == make_png("r-old")
    default = api.get("/images/", params={"dataset": name}).json()["data"]
    assert default == []
    with_archived = api.get("/images/", params={"dataset": name,
                                                "include_archived": "true"}).json()["data"]
    assert [i["id"] for i in with_archived] == [old["id"]]

    new = api.upload(name, "r.png", make_png("r-new"))
    refused = api.patch("/batch/images/update", json={
        "dataset_name": name, "image_ids": [old["id"]], "updates": {"is_archived": False}})
    body = refused.json()
    assert refused.status_code == 200 and body["success"] is False and body["processed"] == 0
    assert body["failed"][0]["id"] == old["id"] and "already exists" in body["failed"][0][
        "reason"]

    archive_new = api.post("/batch/images/delete", json={
        "dataset_name": name, "image_ids": [new["id"]], "permanent": False}).json()
    assert archive_new["operation"] == "archived" and archive_new["processed"] == 1
    restored = api.patch("/batch/images/update", json={
        "dataset_name": name, "image_ids": [old["id"]], "updates": {"is_archived": False}})
    assert restored.json()["success"] is True
    assert api.get(f"/images/{name}/r.png").content == make_png("r-old")


def test_permanent_delete_removes_bytes(api, dataset, make_png, ref_server, check_error):
    name = dataset["name"]
    blobs_before = ref_server.blob_files()
    one = api.upload(name, "p1.png", make_png("perm-1"))
    two = api.upload(name, "p2.png", make_png("perm-2"))
    assert len(ref_server.blob_files() - blobs_before) == 2
    gone = api.delete(f"/images/{name}/p1.png", params={"permanent": "true"})
    assert gone.json() == {"success": True, "message": "Image permanently deleted"}
    check_error(api.get(f"/images/{one['id']}/metadata"), 404)
    result = api.post("/batch/images/delete", json={
        "dataset_name": name, "image_ids": [two["id"]], "permanent": True}).json()
    assert result["operation"] == "deleted" and result["processed"] == 1
    assert ref_server.blob_files() == blobs_before
