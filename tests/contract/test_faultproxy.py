"""The fault-injecting test proxy (tests/faultproxy.py), against a small local upstream.

The upstream is a ``ThreadingHTTPServer`` defined here, so these tests do not depend on the
reference server: they check forwarding (both body framings, large streamed bodies, keep-alive,
concurrency, ``Host``), each fault kind, throttling, pause/resume, that seeded random faults
are reproducible, and the network profile (latency each way, bandwidth per connection, the
set-up cost of a new connection) with timing bounds loose enough for a loaded machine.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from faultproxy import FaultProxy, ResponseRecord

GATED_HEAD = 100_000  # bytes /gated sends before it waits for the test's go-ahead


def payload(size: int) -> bytes:
    """Deterministic bytes of a given size (the upstream serves these)."""
    return random.Random(size).randbytes(size)


@dataclass
class Upstream:
    """What the local upstream saw, and the gate the /gated route waits on."""

    url: str
    seen: list[tuple[str, str, str, int]] = field(default_factory=list)  # method, path, host, body
    gate: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [p for m, p, _h, _n in self.seen if method is None or m == method]


def make_handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.read(2)
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _record(self, body: bytes) -> None:
            path = urlsplit(self.path).path
            with upstream.lock:
                upstream.seen.append((self.command, path, self.headers.get("Host", ""),
                                      len(body)))

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_chunked(self, parts: Iterator[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in parts:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def do_GET(self) -> None:  # noqa: N802
            self._record(b"")
            kind, _, arg = urlsplit(self.path).path.strip("/").partition("/")
            if kind == "data":
                self._send(200, payload(int(arg)), "application/octet-stream")
            elif kind == "chunked":
                data = payload(int(arg))
                self._send_chunked(data[i:i + 10_000] for i in range(0, len(data), 10_000))
            elif kind == "gated":
                data = payload(int(arg))

                def parts() -> Iterator[bytes]:
                    yield data[:GATED_HEAD]
                    upstream.gate.wait(60)
                    yield data[GATED_HEAD:]

                self._send_chunked(parts())
            else:
                self._send(200, json.dumps({"path": self.path}).encode())

        def do_HEAD(self) -> None:  # noqa: N802
            self._record(b"")
            self.send_response(200)
            self.send_header("Content-Length", "12345")
            self.end_headers()

        def _echo(self) -> None:
            body = self._read_body()
            self._record(body)
            answer = {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                      "host": self.headers.get("Host"),
                      "chunked": "chunked" in self.headers.get("Transfer-Encoding", "")}
            self._send(200, json.dumps(answer).encode())

        do_POST = do_PUT = _echo  # noqa: N815

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Connections the proxy resets on purpose are not errors here."""


@pytest.fixture()
def upstream() -> Iterator[Upstream]:
    state = Upstream(url="")
    httpd = QuietServer(("127.0.0.1", 0), make_handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    state.gate.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url, seed=0) as started:
        yield started
        assert started.stats.errors == []


def connect(proxy: FaultProxy, timeout: float = 30) -> http.client.HTTPConnection:
    parts = urlsplit(proxy.url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def fetch(proxy: FaultProxy, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = connect(proxy)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def last(proxy: FaultProxy, path: str) -> ResponseRecord:
    """The final record of the latest request on ``path``."""
    proxy.wait_idle()
    return proxy.stats.records(path=path)[-1]


# ───────────── forwarding ─────────────

def test_forwards_content_length_and_chunked_responses(proxy: FaultProxy) -> None:
    status, headers, body = fetch(proxy, "GET", "/data/300000")
    assert (status, body) == (200, payload(300_000))
    assert headers["Content-Length"] == "300000"

    status, headers, body = fetch(proxy, "GET", "/chunked/123457")
    assert (status, body) == (200, payload(123_457))
    assert headers["Transfer-Encoding"] == "chunked"

    status, headers, body = fetch(proxy, "HEAD", "/anything")
    assert (status, body, headers["Content-Length"]) == (200, b"", "12345")

    proxy.wait_idle()
    records = proxy.stats.responses
    assert [(r.method, r.path, r.status, r.bytes_sent, r.complete, r.in_progress)
            for r in records] == [("GET", "/data/300000", 200, 300_000, True, False),
                                  ("GET", "/chunked/123457", 200, 123_457, True, False),
                                  ("HEAD", "/anything", 200, 0, True, False)]


def test_streams_large_request_bodies_in_both_framings(proxy: FaultProxy) -> None:
    big = random.Random(1).randbytes(50 * 1024 * 1024)
    status, _, body = fetch(proxy, "PUT", "/storage/upload/x", big,
                            {"Content-Type": "image/jpeg"})
    answer = json.loads(body)
    assert status == 200
    assert answer["length"] == len(big)
    assert answer["sha256"] == hashlib.sha256(big).hexdigest()

    pieces = [random.Random(i).randbytes(70_001) for i in range(20)]
    # An iterable body without a Content-Length goes out chunked.
    status, _, body = fetch(proxy, "POST", "/echo", iter(pieces))  # type: ignore[arg-type]
    answer = json.loads(body)
    assert answer["chunked"] is True
    assert answer["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_forwards_the_host_header_unchanged(proxy: FaultProxy, upstream: Upstream) -> None:
    _, _, body = fetch(proxy, "POST", "/echo", b"{}")
    proxy_host = urlsplit(proxy.url).netloc
    assert json.loads(body)["host"] == proxy_host
    assert upstream.seen[-1][2] == proxy_host


def test_keep_alive_connections_in_parallel(proxy: FaultProxy) -> None:
    def session(n: int) -> list[bytes]:
        conn = connect(proxy)
        bodies = []
        for i in range(5):
            conn.request("GET", f"/data/{1000 + n * 10 + i}")
            bodies.append(conn.getresponse().read())
        conn.close()
        return bodies

    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(session, range(40)))

    for n, bodies in enumerate(results):
        assert bodies == [payload(1000 + n * 10 + i) for i in range(5)]
    stats = proxy.stats
    assert stats.connections == 40  # five requests on each connection
    assert stats.count("GET", r"^/data/") == 200


def test_client_reads_a_streamed_response_before_the_upstream_finishes(
        proxy: FaultProxy, upstream: Upstream) -> None:
    conn = connect(proxy)
    conn.request("GET", "/gated/250000")
    response = conn.getresponse()
    first = response.read(GATED_HEAD)
    assert first == payload(250_000)[:GATED_HEAD]
    # The upstream is still blocked on its gate: the proxy has streamed, not buffered.
    record = proxy.wait_for(lambda s: next(
        (r for r in s.records(path="^/gated/") if r.in_progress and r.bytes_sent == GATED_HEAD),
        None))
    assert not record.complete
    upstream.gate.set()
    assert first + response.read() == payload(250_000)
    conn.close()
    assert last(proxy, "^/gated/").complete


# ───────────── on-demand faults ─────────────

def test_fail_next_answers_without_forwarding(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.fail_next(status=503, count=2, method="GET", path=r"^/data/")
    proxy.fail_next(status=429, retry_after=3, path=r"^/limited$")

    assert fetch(proxy, "POST", "/data/10", b"x")[0] == 200  # method does not match
    assert fetch(proxy, "GET", "/other")[0] == 200  # path does not match
    status, _, body = fetch(proxy, "GET", "/data/10")
    assert status == 503
    assert json.loads(body)["error"]["code"] == "fault_injected"
    assert fetch(proxy, "GET", "/data/10")[0] == 503
    status, _, body = fetch(proxy, "GET", "/data/10")
    assert (status, body) == (200, payload(10))  # the rule is used up
    status, headers, _ = fetch(proxy, "GET", "/limited")
    assert (status, headers["Retry-After"]) == (429, "3")

    assert upstream.paths("GET").count("/data/10") == 1  # only the unfaulted one
    assert "/limited" not in upstream.paths()
    assert proxy.stats.faults == {"503": 2, "429": 1}


def test_fail_next_keeps_the_connection_usable(proxy: FaultProxy) -> None:
    proxy.fail_next(status=503, method="PUT")
    conn = connect(proxy)
    conn.request("PUT", "/echo", body=b"a" * 200_000)
    failed = conn.getresponse()
    assert (failed.status, failed.getheader("Connection")) == (503, "keep-alive")
    failed.read()
    conn.request("PUT", "/echo", body=b"b" * 1000)
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["length"]) == (200, 1000)
    conn.close()
    assert proxy.stats.connections == 1


def test_reset_before_forwarding(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.reset_next(path="^/echo$", forward=False)
    with pytest.raises(ConnectionResetError):
        fetch(proxy, "POST", "/echo", b"lost")
    assert upstream.paths("POST") == []
    record = last(proxy, "^/echo$")
    assert (record.status, record.fault, record.in_progress) == (None, "reset", False)
    assert fetch(proxy, "POST", "/echo", b"again")[0] == 200


def test_reset_after_forwarding_loses_the_answer(proxy: FaultProxy,
                                                 upstream: Upstream) -> None:
    proxy.reset_next(method="POST")
    with pytest.raises(ConnectionResetError):
        fetch(proxy, "POST", "/echo", b"processed")
    assert upstream.paths("POST") == ["/echo"]  # the server did the work
    assert proxy.stats.faults == {"reset": 1}


def test_truncate_content_length_response(proxy: FaultProxy) -> None:
    proxy.truncate_next(keep_bytes=100, path="^/data/")
    conn = connect(proxy)
    conn.request("GET", "/data/10000")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert cut.value.partial == payload(10_000)[:100]
    conn.close()
    record = last(proxy, "^/data/")
    assert (record.bytes_sent, record.complete, record.in_progress) == (100, False, False)
    assert fetch(proxy, "GET", "/data/10000")[2] == payload(10_000)  # only once


def test_truncate_chunked_response(proxy: FaultProxy) -> None:
    proxy.truncate_next(keep_bytes=25_000)
    conn = connect(proxy)
    conn.request("GET", "/chunked/80000")
    response = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert cut.value.partial == payload(80_000)[:25_000]
    conn.close()
    assert last(proxy, "^/chunked/").bytes_sent == 25_000


def test_delay_next_holds_the_request_back(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.delay_next(3.0, path="^/slow$")
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(fetch, proxy, "GET", "/slow")
        proxy.wait_for(lambda s: s.count("GET", "^/slow$") == 1)
        assert fetch(proxy, "GET", "/fast")[0] == 200
        assert slow.result()[0] == 200
    # The delayed request reached the upstream after one sent later.
    assert upstream.paths("GET") == ["/fast", "/slow"]
    assert proxy.stats.faults == {"delay": 1}


def test_stall_pauses_mid_body_then_completes(proxy: FaultProxy) -> None:
    proxy.stall_next(2.0, path="^/data/")
    with ThreadPoolExecutor(max_workers=1) as pool:
        download = pool.submit(fetch, proxy, "GET", "/data/300000")
        stalled = proxy.wait_for(lambda s: next(
            (r for r in s.records(path="^/data/") if r.bytes_sent >= 65536), None))
        assert stalled.in_progress and stalled.bytes_sent == 65536
        assert download.result()[2] == payload(300_000)
    record = last(proxy, "^/data/")
    assert (record.complete, record.fault) == (True, "stall")


# ───────────── throttle, pause ─────────────

def test_throttle_limits_the_response_rate_until_lifted(proxy: FaultProxy) -> None:
    total = 2_000_000
    proxy.throttle(100_000)
    with ThreadPoolExecutor(max_workers=1) as pool:
        download = pool.submit(fetch, proxy, "GET", f"/data/{total}")
        partial = proxy.wait_for(lambda s: next(
            (r for r in s.records(path="^/data/") if r.bytes_sent >= 50_000), None))
        # At 100 kB/s the first 50 kB come long before the last of 2 MB.
        assert partial.in_progress and partial.bytes_sent < total
        proxy.throttle(None)
        assert download.result()[2] == payload(total)


def test_pause_resets_open_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    idle = connect(proxy)
    idle.request("GET", "/data/10")
    assert idle.getresponse().read() == payload(10)

    proxy.pause()
    with pytest.raises(ConnectionError):
        idle.request("GET", "/data/10")
        idle.getresponse()
    idle.close()
    with pytest.raises(ConnectionError):
        fetch(proxy, "GET", "/data/11")
    assert proxy.stats.refused >= 1

    proxy.resume()
    assert fetch(proxy, "GET", "/data/12")[2] == payload(12)


def test_pause_interrupts_a_response_in_progress(proxy: FaultProxy, upstream: Upstream) -> None:
    conn = connect(proxy)
    conn.request("GET", "/gated/250000")
    response = conn.getresponse()
    assert response.read(GATED_HEAD) == payload(250_000)[:GATED_HEAD]
    proxy.pause()
    upstream.gate.set()
    with pytest.raises((ConnectionError, http.client.IncompleteRead)):
        response.read()
    conn.close()
    assert not last(proxy, "^/gated/").complete
    proxy.resume()


# ───────────── network profile ─────────────

def timed_request(conn: http.client.HTTPConnection, method: str, path: str,
                  body: bytes | None = None) -> tuple[float, bytes]:
    start = time.perf_counter()
    conn.request(method, path, body=body)
    data = conn.getresponse().read()
    return time.perf_counter() - start, data


def test_network_latency_and_connection_set_up(proxy: FaultProxy) -> None:
    rtt, set_up = 0.1, 0.4
    proxy.network(rtt=rtt, connect=set_up)
    conn = connect(proxy)
    first, data = timed_request(conn, "GET", "/data/100")
    second, again = timed_request(conn, "GET", "/data/100")
    conn.close()
    assert data == again == payload(100)
    assert set_up + rtt <= first < set_up + rtt + 0.5  # a fresh connection pays its set-up
    assert rtt <= second < set_up + rtt  # keep-alive: the set-up is paid once
    assert proxy.stats.connections == 1

    proxy.fail_next(status=503)  # an answer from the proxy itself crosses the network too
    conn = connect(proxy)
    proxy.network(rtt=rtt)
    took, _ = timed_request(conn, "GET", "/data/100")
    conn.close()
    assert rtt <= took < set_up

    proxy.network(None)
    took, _ = timed_request(connect(proxy), "GET", "/data/100")
    assert took < rtt / 2


def test_network_bandwidth_caps_each_body_per_connection(proxy: FaultProxy) -> None:
    size, rate = 1_000_000, 10e6  # 0.1 s a body
    proxy.network(rtt=0, bandwidth=rate)
    took, data = timed_request(connect(proxy), "GET", f"/data/{size}")
    assert data == payload(size)
    assert size / rate <= took < size / rate + 0.5
    took, answer = timed_request(connect(proxy), "PUT", "/storage/x", payload(size))
    assert json.loads(answer)["length"] == size
    assert size / rate <= took < size / rate + 0.5
    proxy.wait_idle()
    assert [(r.bytes_sent, r.bytes_received) for r in proxy.stats.responses][:1] == [(size, 0)]
    assert proxy.stats.responses[1].bytes_received == size

    # The cap is per connection: four bodies in parallel take about as long as one.
    big = 2_000_000
    with ThreadPoolExecutor(max_workers=4) as pool:
        start = time.perf_counter()
        bodies = list(pool.map(lambda _: fetch(proxy, "GET", f"/data/{big}")[2], range(4)))
        took = time.perf_counter() - start
    assert bodies == [payload(big)] * 4
    assert big / rate <= took < 4 * big / rate * 0.75


def test_network_profile_rejects_nonsense(proxy: FaultProxy) -> None:
    for bad in ({"rtt": -1}, {"rtt": 0.1, "bandwidth": 0}, {"rtt": 0.1, "connect": -0.5}):
        with pytest.raises(ValueError):
            proxy.network(**bad)  # type: ignore[arg-type]


# ───────────── random faults ─────────────

def random_run(upstream: Upstream, seed: int) -> tuple[list[str | None], list[object]]:
    """200 sequential requests through a fresh proxy with 30% random faults."""
    with FaultProxy(upstream.url, seed=seed) as proxy:
        proxy.set_random_faults(rate=0.3, kinds=("503", "429", "reset", "stall", "truncate"),
                                stall_seconds=0.01, retry_after=2)
        outcomes: list[object] = []
        for i in range(200):
            try:
                status, headers, body = fetch(proxy, "GET", f"/data/{500 + i % 7}")
                outcomes.append((status, headers.get("Retry-After"), len(body)))
            except (ConnectionError, http.client.HTTPException) as exc:
                outcomes.append(type(exc).__name__)
        stats = proxy.stats
        assert stats.errors == []
        return [r.fault for r in stats.responses], outcomes


def test_random_faults_are_reproducible_for_a_seed(upstream: Upstream) -> None:
    faults, outcomes = random_run(upstream, seed=7)
    again_faults, again_outcomes = random_run(upstream, seed=7)
    other_faults, _ = random_run(upstream, seed=8)

    assert (faults, outcomes) == (again_faults, again_outcomes)
    assert faults != other_faults
    injected = [f for f in faults if f is not None]
    assert 20 <= len(injected) <= 100  # about 30% of 200
    assert set(injected) == {"503", "429", "reset", "stall", "truncate"}
    for fault, outcome in zip(faults, outcomes):
        if fault == "429":
            assert outcome[:2] == (429, "2")  # type: ignore[index]
        elif fault == "503":
            assert outcome[0] == 503  # type: ignore[index]
        elif fault in ("reset", "truncate"):
            assert isinstance(outcome, str)
        else:  # no fault, or a stall: the whole body arrives
            assert outcome[0] == 200 and outcome[2] >= 500  # type: ignore[index]


def test_clear_faults_drops_rules_and_random_faults(proxy: FaultProxy) -> None:
    proxy.fail_next(status=500, count=5)
    proxy.set_random_faults(rate=1.0, kinds=("503",))
    proxy.clear_faults()
    assert all(fetch(proxy, "GET", "/data/5")[0] == 200 for _ in range(5))
    assert proxy.stats.faults == {}
