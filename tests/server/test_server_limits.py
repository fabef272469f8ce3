"""Limits before work (protocol §5): the API key is checked before a body is read, a body past
its limit is refused with 413 without being read, and string and list fields have lengths
(422). Raw sockets show what the server answers before a client has sent its body."""

from __future__ import annotations

import json
import socket
import uuid
from urllib.parse import urlsplit

from pathlib import Path
from typing import Sequence

import pytest

API = "/api/v1/developer"
BIG = 100 * 1024 * 1024  # what the probe sent
# The documented limits (docs/server.md "Limits"), declared in pictofs/server/schemas.py.
MAX_JSON_BODY_BYTES = 4 * 1024 * 1024
MAX_DESCRIPTION_CHARS = 4096
MAX_CLASSES_JSON_BYTES = 64 * 1024
MAX_TAG_CHARS = 200
MAX_ANNOTATIONS = 10_000


def raw_request(base_url: str, head: str, body_parts: Sequence[bytes] = (),
                timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send a request head (and ``body_parts``) on a fresh connection; read the answer until
    the server closes or the body is complete. Times out if the server waits for more."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1"))
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_text, _, rest = data.partition(b"\r\n\r\n")
        lines = header_text.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, headers, rest


def head(method: str, path: str, base_url: str, *lines: str) -> str:
    host = urlsplit(base_url).netloc
    return "\n".join([f"{method} {path} HTTP/1.1", f"Host: {host}", *lines, ""]) + "\n"


def error_code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


# ---- the key before the body ---------------------------------------------------------------

@pytest.mark.parametrize("key_line", [None, "X-API-Key: pk_live_not-a-real-key"])
def test_key_is_checked_before_the_body_is_read(ref_server, key_line):
    """A 100 MB body without a (valid) key: 401 at once, before a byte of it was sent (the
    probe's body grew the server to 499 MB before it answered)."""
    lines = [f"Content-Length: {BIG}", "Content-Type: application/json"]
    if key_line:
        lines.append(key_line)
    status, headers, body = raw_request(
        ref_server.base_url, head("POST", API + "/datasets/", ref_server.base_url, *lines))
    assert status == 401 and error_code(body) == "unauthorized"
    assert headers.get("connection") == "close"
    assert headers.get("x-request-id")


def test_json_body_over_the_limit_is_413_before_it_is_read(ref_server):
    status, headers, body = raw_request(ref_server.base_url, head(
        "POST", API + "/datasets/", ref_server.base_url, f"X-API-Key: {ref_server.key}",
        f"Content-Length: {MAX_JSON_BODY_BYTES + 1}", "Content-Type: application/json"))
    assert status == 413 and error_code(body) == "payload_too_large"
    assert json.loads(body)["error"]["details"] == {"limit": MAX_JSON_BODY_BYTES}
    assert headers.get("connection") == "close"
    # Outside the API too (no key needed there, the limit holds all the same).
    status, _, body = raw_request(ref_server.base_url, head(
        "POST", "/healthz", ref_server.base_url, f"Content-Length: {BIG}"))
    assert status == 413


def test_chunked_body_is_counted_and_refused_past_the_limit(ref_server):
    """No Content-Length: the body is counted as it arrives, and refused once it passes."""
    piece = b"x" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (MAX_JSON_BODY_BYTES // len(piece))
    chunks.append(b"1\r\nx\r\n")  # one byte past the limit
    status, _, body = raw_request(ref_server.base_url, head(
        "POST", API + "/datasets/", ref_server.base_url, f"X-API-Key: {ref_server.key}",
        "Transfer-Encoding: chunked", "Content-Type: application/json"), chunks, timeout=60)
    assert status == 413 and error_code(body) == "payload_too_large"


def test_bodies_up_to_the_limit_are_taken_chunked_or_not(api):
    name = f"lim-{uuid.uuid4().hex[:6]}"
    text = json.dumps({"name": name, "pad": ""})
    padded = json.dumps({"name": name, "pad": "p" * (MAX_JSON_BODY_BYTES - len(text))})
    assert len(padded) == MAX_JSON_BODY_BYTES
    response = api.post("/datasets/", data=padded,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text[:300]
    chunked = api.post("/datasets/", data=iter([b'{"name": "', f"{name}-c".encode(), b'"}']),
                       headers={"Content-Type": "application/json"})
    assert chunked.status_code == 201, chunked.text


# ---- field lengths -------------------------------------------------------------------------

def test_string_and_list_fields_have_limits(api, dataset, make_png, check_error):
    """The probe stored a 100 MB description that every dataset listing then answered."""
    name = dataset["name"]
    base = f"d-{uuid.uuid4().hex[:6]}"
    check_error(api.post("/datasets/", json={
        "name": base, "description": "d" * (MAX_DESCRIPTION_CHARS + 1)}), 422,
        "validation_error")
    assert api.post("/datasets/", json={
        "name": base, "description": "d" * MAX_DESCRIPTION_CHARS}).status_code == 201
    too_many_classes = [{"name": f"c{i}", "note": "n" * 100}
                        for i in range(MAX_CLASSES_JSON_BYTES // 100)]
    check_error(api.post("/datasets/", json={"name": base + "-c", "classes": too_many_classes}),
                422)
    check_error(api.post("/datasets/", json={"name": "n" * 256}), 422)
    check_error(api.upload_url(name, "f" * 300 + ".png"), 422)
    check_error(api.upload_url(name, "ok.png", content_type="image/" + "x" * 300), 422)
    check_error(api.post("/directories/", json={"dataset": name,
                                                "directory_path": "/a" * 2049}), 422)
    image = api.upload(name, "lim.png", make_png("limits"))
    check_error(api.post("/images/bulk-tag", json={
        "dataset": name, "image_ids": [image["id"]], "tags": ["t" * (MAX_TAG_CHARS + 1)]}), 422)
    check_error(api.post("/images/bulk-tag", json={
        "dataset": name, "image_ids": ["i" * 65], "tags": ["t"]}), 422)
    check_error(api.post(f"/annotations/{name}/lim.png", json={
        "annotations": [{"k": 1}] * (MAX_ANNOTATIONS + 1)}), 422)
    check_error(api.post(f"/annotations/{name}/lim.png", json={
        "annotations": [{f"k{i}": i for i in range(65)}]}), 422)
    assert api.post(f"/annotations/{name}/lim.png", json={
        "annotations": [{"k": 1}] * MAX_ANNOTATIONS}).status_code == 200
    listed = api.get("/datasets/", params={"limit": 1000}).json()["data"]
    assert max(len(d["description"] or "") for d in listed) <= MAX_DESCRIPTION_CHARS


def test_the_tested_limits_are_the_declared_and_documented_ones():
    from pictofs.server import schemas

    assert (schemas.MAX_JSON_BODY_BYTES, schemas.MAX_DESCRIPTION_CHARS,
            schemas.MAX_CLASSES_JSON_BYTES, schemas.MAX_TAG_CHARS, schemas.MAX_ANNOTATIONS) == (
        MAX_JSON_BODY_BYTES, MAX_DESCRIPTION_CHARS, MAX_CLASSES_JSON_BYTES, MAX_TAG_CHARS,
        MAX_ANNOTATIONS)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    for text in ("4 MiB", "4,096 characters", "64 KiB", "200 characters", "10,000 annotations"):
        assert text in doc, text
