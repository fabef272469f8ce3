"""The transport reads the proxy variables, ``NO_PROXY`` and ``~/.netrc`` once per host (not at
every request), with the meaning requests gives them: a request to a host goes through the
proxy the environment names, a host in ``NO_PROXY`` is reached directly."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Iterator

import pytest

from pictofs.api.errors import NetworkError
from pictofs.api.retry import RetryPolicy
from pictofs.api.transport import Transport


class _Proxy(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []
    puts: list[tuple[bytes, str | None]] = []  # body and API key header of each PUT
    gets: list[dict[str, str]] = []  # the headers of each GET

    def do_PUT(self) -> None:  # noqa: N802 - the http.server name
        type(self).seen.append(self.requestline)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).puts.append((body, self.headers.get("X-API-Key")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        type(self).seen.append(self.requestline)
        type(self).gets.append(dict(self.headers))
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "lb=node-7; Path=/")  # a load balancer's, say
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def proxy() -> Iterator[str]:
    _Proxy.seen = []
    _Proxy.puts = []
    _Proxy.gets = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()



def through(proxy: str, monkeypatch: pytest.MonkeyPatch) -> Transport:
    """A transport to ``pictograph.invalid`` in an environment that names ``proxy`` for
    it (and no ``NO_PROXY``), without retries."""
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return Transport("http://pictograph.invalid/api", "pk_test", retry=RetryPolicy(max_retries=0))

def test_requests_go_through_the_proxy_the_environment_names(proxy, monkeypatch) -> None:
    with through(proxy, monkeypatch) as transport:
        for _ in range(3):
            body, _headers = transport.request_json("GET", "/images/")
            assert body == {"ok": True}
    assert _Proxy.seen == \
        ["GET http://pictograph.invalid/api/api/v1/developer/images/ HTTP/1.1"] * 3


def test_a_host_in_no_proxy_is_reached_directly(proxy, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "pictograph.invalid")
    with Transport("http://pictograph.invalid/api", "pk_test",
                   retry=RetryPolicy(max_retries=0)) as transport:
        with pytest.raises(NetworkError):  # no such host: it was not sent to the proxy
            transport.request_json("GET", "/images/")
    assert _Proxy.seen == []


def test_a_signed_put_goes_through_the_proxy_too_and_without_the_key(proxy,
                                                                    monkeypatch) -> None:
    """The signed PUT is handed to the adapter directly (``_Session.put_direct``), not
    through ``Session.request``: the environment's proxy still applies, the key is not sent."""
    url = "http://storage.invalid/storage/upload/token?sig=abc"
    with through(proxy, monkeypatch) as transport:
        transport.put_signed(url, b"image bytes", "image/png", 11)
    assert _Proxy.seen == [f"PUT {url} HTTP/1.1"]
    assert _Proxy.puts == [(b"image bytes", None)]


def test_a_download_goes_through_the_proxy_with_the_key(proxy, monkeypatch) -> None:
    """Requests are prepared by the transport and handed to ``Session.send``
    (``_Session.request_direct``), not through ``Session.request``: the environment's proxy
    applies to downloads as to API calls, with the key."""
    with through(proxy, monkeypatch) as transport:
        with transport.stream("GET", "/images/abc") as body:
            assert json.loads(b"".join(body)) == {"ok": True}
    assert _Proxy.seen == ["GET http://pictograph.invalid/api/api/v1/developer/images/abc HTTP/1.1"]
    assert _Proxy.gets[0]["X-API-Key"] == "pk_test"
    assert _Proxy.gets[0]["User-Agent"].startswith("pictofs/")


def test_cookies_the_service_sets_are_sent_back(proxy, monkeypatch) -> None:
    """As with ``Session.request``: a cookie an answer sets (a load balancer's) goes with the
    next requests to that host."""
    with through(proxy, monkeypatch) as transport:
        transport.request_json("GET", "/images/")
        with transport.stream("GET", "/images/abc") as body:
            b"".join(body)
    assert "Cookie" not in _Proxy.gets[0]
    assert _Proxy.gets[1]["Cookie"] == "lb=node-7"


def test_a_netrc_entry_for_the_host_is_used_as_requests_uses_it(proxy, monkeypatch,
                                                                 tmp_path) -> None:
    """A ``~/.netrc`` (here ``$NETRC``) entry for the service's host gives its basic
    credentials, as requests gives them to a session that reads the environment."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pictograph.invalid login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with through(proxy, monkeypatch) as transport:
        transport.request_json("GET", "/images/")
    assert _Proxy.gets[0]["Authorization"] == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
