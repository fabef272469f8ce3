"""What ``Transport`` puts on the wire, seen by small recording servers on loopback, and how
it survives bodies cut short (through the fault proxy in front of the reference server)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
from clientkit import write_png
from faultproxy import FaultProxy
from imagegen import sized_jpeg

from pictofs import __version__
from pictofs.api import Client, NetworkError, ServerError
from pictofs.api import images as images_api
from pictofs.api.errors import StreamCutShort
from pictofs.api.retry import RetryPolicy
from pictofs.api.redaction import redact_signed_url
from pictofs.api.transport import Transport

KEY = "pk_live_transporttestkey"
NO_SLEEP = RetryPolicy(random=lambda: 0.5, sleep=lambda s: None)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A loopback HTTP server that records requests and answers from a script."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    # each answer: (status, headers, body); the last one repeats
    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture()
def recorder_factory() -> Iterator[Callable[[], Recorder]]:
    servers: list[ThreadingHTTPServer] = []

    def make() -> Recorder:
        recorder = Recorder(url="")

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                answers = recorder.answers or [(200, {}, b'{"data": {}}')]
                status, headers, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return recorder

    yield make
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------- headers


def test_api_requests_carry_key_agent_and_idempotency(recorder_factory) -> None:
    rec = recorder_factory()
    with Transport(rec.url, KEY, retry=NO_SLEEP) as t:
        t.request_json("GET", "/datasets/", params={"limit": 5})
        t.request_json("POST", "/datasets/", json={"name": "x"})
        t.request_json("PATCH", "/batch/images/update", json={})
        t.request_json("DELETE", "/images/ds/x.png")
        t.request_json("POST", "/images/register", json={}, idempotency_key="caller-key")
    get, post, patch, delete, keyed = rec.seen
    assert get.path == "/api/v1/developer/datasets/?limit=5"
    for seen in rec.seen:
        assert seen.headers["X-API-Key"] == KEY
        assert seen.headers["User-Agent"] == f"pictofs/{__version__}"
    for seen in (get, delete):
        assert "Idempotency-Key" not in seen.headers
    for seen in (post, patch, keyed):
        assert re.fullmatch(r"[0-9a-f]{32}", seen.headers["Idempotency-Key"])
    assert post.headers["Idempotency-Key"] != patch.headers["Idempotency-Key"]
    assert json.loads(post.body) == {"name": "x"}


def test_retries_of_one_call_reuse_its_idempotency_key(recorder_factory) -> None:
    rec = recorder_factory()
    rec.answers = [(503, {}, b""), (502, {}, b"oops"), (201, {}, b'{"data": {"ok": true}}')]
    slept: list[float] = []
    policy = RetryPolicy(random=lambda: 0.5, sleep=slept.append)
    with Transport(rec.url, KEY, retry=policy) as t:
        body, _ = t.request_json("POST", "/images/register", json={"a": 1})
    assert body == {"data": {"ok": True}}
    keys = {seen.headers["Idempotency-Key"] for seen in rec.seen}
    assert len(rec.seen) == 3 and len(keys) == 1
    assert slept == [1.0, 2.0]


def test_retries_give_up_after_three(recorder_factory) -> None:
    rec = recorder_factory()
    rec.answers = [(503, {"X-Request-Id": "r-503"}, b'{"error": {"code": "down", "message": "x"}}')]
    with Transport(rec.url, KEY, retry=NO_SLEEP) as t:
        with pytest.raises(ServerError) as caught:
            t.request_json("GET", "/me")
    assert len(rec.seen) == 4
    assert caught.value.request_id == "r-503"


def test_a_2xx_whose_json_is_cut_is_retried_on_get_and_keyed_post(recorder_factory) -> None:
    rec = recorder_factory()
    rec.answers = [(200, {}, b'{"data": {"na'), (200, {}, b'{"data": {"name": "x"}}')]
    with Transport(rec.url, KEY, retry=NO_SLEEP) as t:
        body, _ = t.request_json("GET", "/datasets/x")
        assert body == {"data": {"name": "x"}}
        # the POST took effect: sent again with the same key, the service replays its answer
        rec.answers = [(200, {}, b'{"data": {"na'), (200, {}, b'{"data": {}}')]
        body, _ = t.request_json("POST", "/datasets/", json={})
        assert body == {"data": {}}
    assert [s.method for s in rec.seen] == ["GET", "GET", "POST", "POST"]
    first, again = rec.seen[2:]
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]


def test_connection_refused_is_a_network_error_after_retries() -> None:
    slept: list[float] = []
    policy = RetryPolicy(random=lambda: 0.5, sleep=slept.append)
    with Transport("http://127.0.0.1:9", KEY, retry=policy) as t:  # nothing listens on 9
        with pytest.raises(NetworkError) as caught:
            t.request_json("GET", "/me")
    assert slept == [1.0, 2.0, 4.0]
    assert KEY not in str(caught.value)


def test_signed_put_uses_the_url_exactly_and_no_key(recorder_factory) -> None:
    api, storage = recorder_factory(), recorder_factory()
    url = storage.url + "/bucket/o/a%20b.png?X-Sig=abc%2Fdef&Expires=99"
    with Transport(api.url, KEY, retry=NO_SLEEP) as t:
        t.put_signed(url, b"12345", "image/png", 5)
    (put,) = storage.seen
    assert put.method == "PUT"
    assert put.path == "/bucket/o/a%20b.png?X-Sig=abc%2Fdef&Expires=99"
    assert "X-API-Key" not in put.headers
    assert put.headers["Content-Type"] == "image/png"
    assert put.headers["Content-Length"] == "5"
    assert put.body == b"12345"
    assert api.seen == []


def test_signed_put_retries_resend_the_whole_file(recorder_factory, tmp_path: Path) -> None:
    storage = recorder_factory()
    storage.answers = [(503, {}, b""), (200, {}, b"")]
    path = tmp_path / "f.png"
    path.write_bytes(b"abcdef")
    with Transport(storage.url, KEY, retry=NO_SLEEP) as t, open(path, "rb") as handle:
        t.put_signed(storage.url + "/up/tok", handle, "image/png", 6)
        t.put_signed(storage.url + "/up/tok", path, "image/png", 6)
    assert [s.body for s in storage.seen] == [b"abcdef"] * 3


def test_absolute_urls_are_rebased_on_the_configured_base(recorder_factory) -> None:
    rec = recorder_factory()
    rec.answers = [(200, {"Content-Type": "image/png"}, b"pixels")]
    with Transport(rec.url, KEY, retry=NO_SLEEP) as t:
        with t.stream("GET", "https://elsewhere.invalid/api/v1/developer/images/abc?x=1") as s:
            assert b"".join(s) == b"pixels"
    assert rec.seen[0].path == "/api/v1/developer/images/abc?x=1"
    assert rec.seen[0].headers["X-API-Key"] == KEY


def test_a_redirect_to_another_host_drops_the_key(recorder_factory) -> None:
    api, other = recorder_factory(), recorder_factory()
    api.answers = [(302, {"Location": other.url + "/landing"}, b"")]
    with Transport(api.url, KEY, retry=NO_SLEEP) as t:
        t.request_json("GET", "/images/abc")
    assert api.seen[0].headers["X-API-Key"] == KEY
    assert other.seen[0].path == "/landing"
    assert "X-API-Key" not in other.seen[0].headers


def test_redact_signed_url() -> None:
    assert redact_signed_url("http://h:1/storage/upload/SECRET") == "http://h:1/storage/upload/…"
    assert "sig" not in redact_signed_url("https://s.example/b/o.png?sig=SECRET")


# ---------------------------------------------------------------------- cut short, via the proxy


@pytest.fixture()
def proxied(server) -> Iterator[tuple[FaultProxy, Client]]:
    with FaultProxy(upstream=server.base_url) as proxy:
        with Client(api_key=server.key, base_url=proxy.url) as c:
            c.transport.retry = NO_SLEEP
            yield proxy, c


# Reference only: the fault proxy is in front of the API; on the hosted profile these
# bytes come from the storage host.
@pytest.mark.profiles("reference")
def test_a_small_image_cut_short_is_fetched_again(proxied, dataset, tmp_path: Path) -> None:
    proxy, client = proxied
    source = write_png(tmp_path / "s.png", 1, size=(64, 64))
    image = client.images.upload(dataset_id=dataset.id, file_path=source)
    proxy.truncate_next(keep_bytes=100, method="GET", path=rf"/images/{image.id}$")
    target = client.images.download(image.id, output_path=tmp_path / "copy.png")
    assert target.read_bytes() == source.read_bytes()
    assert proxy.stats.count("GET", rf"/images/{image.id}$") == 2


def test_metadata_cut_short_is_fetched_again(proxied, dataset, tmp_path: Path) -> None:
    proxy, client = proxied
    image = client.images.upload(dataset_id=dataset.id, file_path=write_png(tmp_path / "m.png"))
    proxy.truncate_next(keep_bytes=20, method="GET", path=r"/metadata$")
    assert client.images.get(image.id) == image


# Reference only: the fault proxy is in front of the API; on the hosted profile these
# bytes come from the storage host.
@pytest.mark.profiles("reference")
def test_a_stream_cut_after_handing_bytes_over_raises(proxied, dataset, tmp_path: Path) -> None:
    proxy, client = proxied
    source = tmp_path / "big.jpg"
    source.write_bytes(sized_jpeg(3_000_000, seed=3))
    image = client.images.upload(dataset_id=dataset.id, file_path=source)
    proxy.truncate_next(keep_bytes=2_200_000, method="GET", path=rf"/images/{image.id}$")
    received = 0
    with pytest.raises(StreamCutShort, match="cut short"):
        with images_api.open_bytes(client.transport, image.id) as stream:
            for chunk in stream:
                received += len(chunk)
    assert 0 < received <= 2_200_000


# Reference only: the fault proxy is in front of the API; on the hosted profile these
# bytes come from the storage host.
@pytest.mark.profiles("reference")
def test_a_download_cut_every_time_leaves_nothing(proxied, dataset, tmp_path: Path) -> None:
    proxy, client = proxied
    source = tmp_path / "big.jpg"
    source.write_bytes(sized_jpeg(3_000_000, seed=4))
    image = client.images.upload(dataset_id=dataset.id, file_path=source)
    proxy.truncate_next(count=4, keep_bytes=2_200_000, method="GET", path=rf"/images/{image.id}$")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(NetworkError, match="cut short"):
        client.images.download(image.id, output_path=out / "big.jpg")
    assert list(out.iterdir()) == []
    assert proxy.stats.count("GET", rf"/images/{image.id}$") == 4
    client.images.download(image.id, output_path=out / "big.jpg")  # fine the next time
    assert (out / "big.jpg").read_bytes() == source.read_bytes()
