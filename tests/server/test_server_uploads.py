"""The three-step upload of the reference server: size limit, content checks, HEIC conversion,
bulk forms, the storage port, and the life of the server process (restart, stop, port in use).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import struct
import time
import zlib
from pathlib import Path

import pillow_heif
import pytest
import requests
from PIL import Image

from pictofs.errors import ConfigError
from pictofs.server import run

LIMIT = 52_428_800


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (1-bit grey) with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def put_and_register(api, dataset: str, filename: str, data: bytes,
                     content_type: str = "image/png", directory: str = "/"):
    url = api.upload_url(dataset, filename, directory, content_type)
    assert url.status_code == 200, url.text
    assert api.put(url.json()["data"]["upload_url"], data, content_type).status_code == 200
    return api.register(dataset, filename, directory, len(data), content_type)


# ---- size ----------------------------------------------------------------------------------

def test_over_50_mb_is_413_and_nothing_is_stored(api, dataset, ref_server, check_error):
    url = api.upload_url(dataset["name"], "big.jpg", content_type="image/jpeg").json()[
        "data"]["upload_url"]
    before = ref_server.blob_files()
    body = b"\xff\xd8" + b"\0" * (LIMIT - 1)  # 50 MB + 1 byte
    assert len(body) == LIMIT + 1
    check_error(api.put(url, body, "image/jpeg"), 413, "payload_too_large")
    assert ref_server.blob_files() == before
    check_error(api.register(dataset["name"], "big.jpg", file_size=LIMIT + 1,
                             content_type="image/jpeg"), 413)
    assert api.get("/images/", params={"dataset": dataset["name"]}).json()["data"] == []


def test_exactly_50_mb_is_taken(api, dataset):
    data = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(data, format="JPEG")
    head = data.getvalue()
    body = head + b"\0" * (LIMIT - len(head))  # bytes after EOI are ignored by decoders
    response = put_and_register(api, dataset["name"], "limit.jpg", body, "image/jpeg")
    assert response.status_code == 201, response.text
    assert response.json()["data"]["file_size"] == LIMIT


def test_put_without_content_length_is_refused(api, dataset, ref_server, make_png):
    url = api.upload_url(dataset["name"], "chunked.png").json()["data"]["upload_url"]
    before = ref_server.blob_files()
    response = requests.put(url, data=iter([make_png("chunked")]),
                            headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 411 and response.json()["error"]["code"] == "length_required"
    assert ref_server.blob_files() == before


def test_file_size_mismatch_is_400(api, dataset, make_png, check_error):
    data = make_png("mismatch")
    url = api.upload_url(dataset["name"], "m.png").json()["data"]["upload_url"]
    assert api.put(url, data).status_code == 200
    check_error(api.register(dataset["name"], "m.png", file_size=len(data) + 1), 400,
                "file_size_mismatch")
    assert api.register(dataset["name"], "m.png", file_size=len(data)).status_code == 201


# ---- content -------------------------------------------------------------------------------

def test_text_bytes_named_jpg_are_415(api, dataset, ref_server, check_error):
    before = ref_server.blob_files()
    response = put_and_register(api, dataset["name"], "notes.jpg", b"just some text\n",
                                "image/jpeg")
    check_error(response, 415, "not_an_image")
    assert ref_server.blob_files() == before  # the refused bytes are not kept


def test_unsupported_extension_is_415(api, dataset, check_error):
    name = dataset["name"]
    check_error(api.upload_url(name, "notes.txt", content_type="text/plain"), 415)
    check_error(api.upload_url(name, "photo.svg", content_type="image/svg+xml"), 415)
    check_error(api.upload_url(name, "noext", content_type="image/png"), 415)
    check_error(api.register(name, "notes.txt", file_size=3, content_type="text/plain"), 415)
    check_error(api.upload_url(name, "x.png", content_type="text/plain"), 415)


def test_collision_is_409_at_both_steps(api, dataset, make_png, check_error):
    name = dataset["name"]
    api.upload(name, "c.png", make_png("c1"), "/d")
    check_error(api.upload_url(name, "c.png", "/d"), 409, "conflict")
    # A URL handed out before the name was taken: register refuses.
    early = api.upload_url(name, "late.png", "/d").json()["data"]["upload_url"]
    api.upload(name, "late.png", make_png("late-1"), "/d")
    assert api.put(early, make_png("late-2")).status_code == 200
    check_error(api.register(name, "late.png", "/d", len(make_png("late-2"))), 409)
    # The same name in another folder is fine.
    assert api.upload(name, "c.png", make_png("c2"), "/e")["directory_path"] == "/e"


@pytest.mark.parametrize("size", [(20_000, 20_000), (10_000, 10_000)])
def test_decompression_bomb_is_415(size, api, dataset, check_error):
    assert size[0] * size[1] > Image.MAX_IMAGE_PIXELS  # the default guard
    response = put_and_register(api, dataset["name"], f"bomb{size[0]}.png",
                                png_header_only(*size))
    check_error(response, 415, "decompression_bomb")


def test_exif_orientation_and_missing_dimensions(api, dataset):
    image = Image.new("RGB", (40, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed 10 x 40
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    response = put_and_register(api, dataset["name"], "rotated.jpg", out.getvalue(),
                                "image/jpeg")
    assert response.status_code == 201
    data = response.json()["data"]
    assert (data["width"], data["height"]) == (10, 40)


def test_heic_becomes_png(api, dataset, check_error):
    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    Image.new("RGB", (12, 6), (0, 90, 200)).save(out, format="HEIF")
    heic = out.getvalue()
    response = put_and_register(api, dataset["name"], "phone.HEIC", heic, "image/heic", "/cam")
    assert response.status_code == 201, response.text
    image = response.json()["data"]
    assert image["filename"] == "phone.png" and image["content_type"] == "image/png"
    assert (image["width"], image["height"]) == (12, 6)
    stored = api.get(f"/images/{dataset['name']}/cam/phone.png")
    assert stored.headers["Content-Type"] == "image/png"
    assert stored.content.startswith(b"\x89PNG") and len(stored.content) == image["file_size"]
    with Image.open(io.BytesIO(stored.content)) as decoded:
        assert decoded.size == (12, 6)
    # The converted name now collides with a second HEIC of that stem.
    check_error(api.upload_url(dataset["name"], "phone.heic", "/cam", "image/heic"), 409)


# ---- bulk ----------------------------------------------------------------------------------

def test_bulk_upload_reports_failures_per_file(api, dataset, make_png, check_error):
    name = dataset["name"]
    api.upload(name, "taken.png", make_png("taken"), "/b")
    files = {"one.png": make_png("b1"), "taken.png": make_png("b2"), "bad.png": b"not an image"}
    urls = api.post("/images/bulk-upload-url", json={"dataset": name, "images": [
        {"filename": f, "directory_path": "/b", "content_type": "image/png"} for f in files]})
    assert urls.status_code == 200
    entries = urls.json()["data"]["upload_urls"]
    assert urls.json()["data"]["expires_in_minutes"] == 15
    for entry in entries:
        assert api.put(entry["upload_url"], files[entry["filename"]]).status_code == 200
    result = api.post("/images/bulk-register", json={"dataset": name, "images": [
        {"filename": f, "directory_path": "/b", "file_size": len(d), "content_type": "image/png"}
        for f, d in files.items()]}).json()["data"]
    assert [i["filename"] for i in result["succeeded"]] == ["one.png"]
    assert result["count"] == 1
    assert [(f["filename"], f["status"]) for f in result["failed"]] == [("taken.png", 409),
                                                                        ("bad.png", 415)]
    assert all(f["directory_path"] == "/b" and f["error"] for f in result["failed"])
    check_error(api.post("/images/bulk-upload-url", json={"dataset": name, "images": [
        {"filename": "a.png", "directory_path": "/x", "content_type": "image/png"},
        {"filename": "b.png", "directory_path": "/y", "content_type": "image/png"}]}), 400)
    check_error(api.post("/images/bulk-upload-url", json={"dataset": name, "images": [
        {"filename": "a.png", "directory_path": "/x", "content_type": "image/png"}] * 501}), 422)


def jpeg_bytes(seed: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (3, 2), (seed, 20, 30)).save(out, format="JPEG")
    return out.getvalue()


def test_the_stored_type_is_the_one_the_bytes_have(api, dataset, make_png):
    """The probe's PNG bytes in ``x.jpg`` were stored (and served) as image/jpeg: the type of
    the name and the URL, not of the bytes."""
    name = dataset["name"]
    png = make_png("typed")
    single = put_and_register(api, name, "x.jpg", png, "image/jpeg")
    assert single.status_code == 201, single.text
    image = single.json()["data"]
    assert (image["filename"], image["content_type"]) == ("x.jpg", "image/png")
    assert api.get(f"/images/{image['id']}/metadata").json()["data"]["content_type"] == \
        "image/png"
    served = api.get(f"/images/{image['id']}")
    assert served.headers["Content-Type"] == "image/png" and served.content == png

    files = {"j.png": jpeg_bytes(1), "p.png": make_png("bulk-typed"), "w.gif": jpeg_bytes(2)}
    types = {"j.png": "image/png", "p.png": "image/png", "w.gif": "image/gif"}
    urls = api.post("/images/bulk-upload-url", json={"dataset": name, "images": [
        {"filename": f, "directory_path": "/t", "content_type": types[f]} for f in files]})
    for entry in urls.json()["data"]["upload_urls"]:
        assert api.put(entry["upload_url"], files[entry["filename"]],
                       types[entry["filename"]]).status_code == 200
    result = api.post("/images/bulk-register", json={"dataset": name, "images": [
        {"filename": f, "directory_path": "/t", "file_size": len(d), "content_type": types[f]}
        for f, d in files.items()]}).json()["data"]
    assert {i["filename"]: i["content_type"] for i in result["succeeded"]} == {
        "j.png": "image/jpeg", "p.png": "image/png", "w.gif": "image/jpeg"}


# ---- spent URLs and expired uploads -------------------------------------------------------

def blob_path(data_dir: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return data_dir / "blobs" / digest[:2] / digest[2:4] / digest


def expire_pending(data_dir: Path, dataset_id: str, filename: str) -> None:
    """Move the times of a pending upload a day back (as if the day had passed)."""
    conn = sqlite3.connect(data_dir / "pictofs.db", timeout=15)
    try:
        times = [column for _, column, *_ in conn.execute("PRAGMA table_info(uploads)")
                 if column in ("created_at", "url_expires_at")]
        with conn:
            changed = conn.execute(
                "UPDATE uploads SET " + ", ".join(f"{c} = {c} - 86400" for c in times)
                + " WHERE dataset_id = ? AND filename = ?", (dataset_id, filename)).rowcount
        assert changed == 1
    finally:
        conn.close()


def test_an_upload_url_is_spent_by_its_register(api, dataset, ref_server, make_png,
                                                check_error):
    """The probe PUT again after register, and after archiving the image registered the
    same path again without a new URL: a URL was a reusable credential for 15 minutes."""
    name = dataset["name"]
    data = make_png("spent")
    url = api.upload_url(name, "spent.png").json()["data"]["upload_url"]
    assert api.put(url, data).status_code == 200
    assert api.put(url, data).status_code == 200  # a PUT retried before the register: taken
    image = api.register(name, "spent.png", file_size=len(data))
    assert image.status_code == 201
    before = ref_server.blob_files()
    for other in (make_png("other"), make_png("longer other bytes")):  # same size, another
        error = check_error(api.put(url, other), 403, "forbidden")
        assert error["details"] == {"reason": "spent"}
    assert ref_server.blob_files() == before
    archived = api.post("/batch/images/delete", json={"dataset_name": name,
                                                      "image_ids": [image.json()["data"]["id"]]})
    assert archived.json()["processed"] == 1
    check_error(api.put(url, make_png("sneak")), 403, "forbidden")
    # Exactly the registered bytes (a client repeating a whole idempotent upload): answered,
    # nothing stored, nothing to register.
    assert api.put(url, data).status_code == 200
    assert ref_server.blob_files() == before
    check_error(api.register(name, "spent.png", file_size=len(data)), 400, "upload_missing")
    everything = api.get("/images/", params={"dataset": name, "include_archived": "true"})
    assert [i["is_archived"] for i in everything.json()["data"]] == [True]


def test_a_pending_upload_expires_with_its_url(api, dataset, ref_server, make_png, check_error):
    data = make_png("late")
    url = api.upload_url(dataset["name"], "late.png").json()["data"]["upload_url"]
    assert api.put(url, data).status_code == 200
    assert blob_path(ref_server.data_dir, data).exists()
    expire_pending(ref_server.data_dir, dataset["id"], "late.png")
    check_error(api.register(dataset["name"], "late.png", file_size=len(data)), 400,
                "upload_expired")
    assert not blob_path(ref_server.data_dir, data).exists()
    check_error(api.register(dataset["name"], "late.png", file_size=len(data)), 400,
                "upload_missing")


def test_expired_uploads_are_swept_at_start_and_while_running(tmp_path, spawn_server,
                                                              stop_server, api_for, make_png,
                                                              monkeypatch):
    """The probe left 8 unregistered blobs that stayed for good."""
    monkeypatch.setenv("PICTOFS_SWEEP_INTERVAL", "0.2")
    data_dir = tmp_path / "data"
    server = spawn_server(data_dir)
    api = api_for(server)
    dataset = api.create_dataset("sweep")
    orphans = {f"o{i}.png": make_png(f"orphan{i}") for i in range(8)}
    for filename, data in orphans.items():
        url = api.upload_url(dataset["name"], filename).json()["data"]["upload_url"]
        assert api.put(url, data).status_code == 200
    assert all(blob_path(data_dir, data).exists() for data in orphans.values())
    for filename in list(orphans)[:7]:
        expire_pending(data_dir, dataset["id"], filename)
    deadline = time.monotonic() + 20
    while any(blob_path(data_dir, orphans[f]).exists() for f in list(orphans)[:7]):
        assert time.monotonic() < deadline, "the expired uploads were not swept"
        time.sleep(0.1)
    kept = list(orphans)[7]
    assert blob_path(data_dir, orphans[kept]).exists()  # not expired: still registrable
    assert api.register(dataset["name"], kept, file_size=len(orphans[kept])).status_code == 201

    late = make_png("expired while the server was down")
    url = api.upload_url(dataset["name"], "down.png").json()["data"]["upload_url"]
    assert api.put(url, late).status_code == 200
    assert stop_server(server) == 0
    expire_pending(data_dir, dataset["id"], "down.png")
    monkeypatch.setenv("PICTOFS_SWEEP_INTERVAL", "3600")
    spawn_server(data_dir)
    assert not blob_path(data_dir, late).exists()  # swept before the server listened


# ---- the server process --------------------------------------------------------------------

def test_storage_port_and_restart_keep_data(tmp_path, spawn_server, stop_server, api_for,
                                            make_png):
    data_dir = tmp_path / "data"
    first = spawn_server(data_dir, storage_port=0)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "owner.key").stat().st_mode & 0o777 == 0o600
    assert (data_dir / "server.json").stat().st_mode & 0o777 == 0o600
    info = json.loads((data_dir / "server.json").read_text())
    assert info["storage_port"] and info["storage_port"] != info["port"]
    api = api_for(first)
    dataset = api.create_dataset("kept")
    url = api.upload_url(dataset["name"], "kept.png").json()["data"]["upload_url"]
    assert url.startswith(f"http://127.0.0.1:{info['storage_port']}/storage/upload/")
    stored = api.put(url, make_png("kept"))
    assert stored.status_code == 200 and stored.headers.get("X-Request-Id")
    image = api.register(dataset["name"], "kept.png", file_size=len(make_png("kept"))).json()[
        "data"]
    # The storage port serves storage only.
    assert requests.get(f"http://127.0.0.1:{info['storage_port']}/api/v1/developer/datasets/",
                        headers={"X-API-Key": first.key}, timeout=10).status_code == 404

    assert stop_server(first) == 0
    assert not (data_dir / "server.json").exists()
    log = first.log_text()
    assert str(data_dir / "owner.key") in log and first.key not in log

    second = spawn_server(data_dir)
    assert second.key == first.key and second.storage_port is None
    again = api_for(second)
    assert again.get(f"/images/{image['id']}").content == make_png("kept")
    assert again.get(f"/datasets/{dataset['name']}").json()["data"]["image_count"] == 1
    assert again.upload_url(dataset["name"], "n.png").json()["data"]["upload_url"].startswith(
        second.base_url + "/storage/upload/")
    assert run.stop(data_dir) is True
    second.process.wait(10)
    assert second.process.returncode == 0
    assert not (data_dir / "server.json").exists()
    assert run.stop(data_dir) is False


def test_upload_url_follows_the_host_header(api, dataset, ref_server):
    response = api.upload_url(dataset["name"], "h.png").json()["data"]["upload_url"]
    assert response.startswith(ref_server.base_url + "/storage/upload/")
    port = ref_server.base_url.rsplit(":", 1)[1]
    proxied = api.post("/images/upload-url", headers={"Host": f"proxy.example:{port}"}, json={
        "dataset": dataset["name"], "filename": "h.png", "directory_path": "/",
        "content_type": "image/png"})
    assert proxied.json()["data"]["upload_url"].startswith(
        f"http://proxy.example:{port}/storage/upload/")


def test_second_server_on_same_dir_or_busy_port_is_refused(ref_server, tmp_path):
    with pytest.raises(ConfigError, match="already running"):
        run.serve(ref_server.data_dir, port=0)
    busy = int(ref_server.base_url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match="in use"):
        run.serve(tmp_path / "other", port=busy)
    assert not (tmp_path / "other" / "server.json").exists()
    assert os.path.exists(tmp_path / "other" / "owner.key")
