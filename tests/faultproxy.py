"""A loopback HTTP/1.1 reverse proxy that injects faults, for tests.

The proxy sits between a client under test and an upstream HTTP server (usually the reference
server) and runs an asyncio loop in a background thread of the test process. It streams request
and response bodies in both framings (``Content-Length`` and chunked), serves many concurrent
keep-alive connections, and opens one upstream connection per request. ``Host`` is forwarded
unchanged, so a server that builds absolute URLs from it (the signed ``upload_url``) points
them back at the proxy and the storage PUTs go through it too.

Usage::

    proxy = FaultProxy(upstream="http://127.0.0.1:8000", seed=0)
    proxy.start()                 # or: with FaultProxy(...) as proxy:
    proxy.url                     # "http://127.0.0.1:NNNN"
    proxy.stop()

On-demand faults apply to the next ``count`` requests that match. ``method`` (optional) is
compared case-insensitively; ``path`` (optional) is a regular expression searched in the
request path without its query string, e.g. ``r"^/api/v1/developer/images/$"``. Rules are tried
in the order they were added and a request gets at most one fault::

    proxy.fail_next(status=503, count=1, method=None, path=None, retry_after=None)
        # answer this status (JSON error body, Retry-After if given) without forwarding
    proxy.reset_next(count=1, method=None, path=None, forward=True)
        # RST the client connection instead of answering; forward=True lets the request reach
        # the server first (its answer is lost), forward=False drops it unforwarded
    proxy.truncate_next(count=1, keep_bytes=100, method=None, path=None)
        # forward, send the headers and only the first keep_bytes of the body, then close
        # (a chunked body also loses its final chunk, so the cut is always visible)
    proxy.delay_next(seconds, count=1, method=None, path=None)   # wait, then forward
    proxy.stall_next(seconds, count=1, method=None, path=None)
        # forward, send the headers and the first body bytes (half the body, at most
        # 64 KiB), pause, then finish normally
    proxy.throttle(bytes_per_second)      # cap the body rate of every response; None: no cap
    proxy.network(rtt=0.040, bandwidth=25e6, connect=0.040)   # a distant service; None: off
    proxy.pause(); proxy.resume()         # pause: reset open connections and refuse new ones
                                          # (accepted, then reset at once); resume: normal
    proxy.set_random_faults(rate=0.1, kinds=("503", "429", "reset", "stall", "truncate"),
                            stall_seconds=2.0, retry_after=1, method=None, path=None)
        # kinds: "reset" (forwarded or not, drawn too), "stall", "truncate" (half the body,
        # 100 bytes of one of unknown length) or any status as a string ("500", "503", ...;
        # "429" carries ``retry_after``)
        # each matching request gets a fault with probability ``rate``; the draw for the n-th
        # matching request since this call depends only on (seed, n), so a sequential client
        # sees the same faults on every run whatever ids its URLs contain (concurrent clients
        # get the same pattern by order of arrival)
    proxy.clear_faults()                  # drop pending rules and random faults
                                          # (throttle and pause are left as they are)

A network profile makes loopback look like a service far away, for benchmarks. Every
request then pays what it would on a real path, with asyncio sleeps only (no busy loop, so it
costs no CPU):

- ``rtt``: half of it is added each way: the request head is held ``rtt / 2`` before it is
  forwarded, the response head ``rtt / 2`` before it is sent (an error the proxy answers itself
  pays both halves too), so every request costs at least one round trip;
- ``bandwidth`` (bytes per second, None: no cap): each body, the request's as it is forwarded
  and the response's as it is sent, is paced on its own connection so that its n-th byte
  leaves no earlier than ``n / bandwidth`` after its first; the cap is per connection, as a
  TCP connection's window limits it, so parallel connections add up (pacing is absolute from
  the body's start, so sleep overshoots do not accumulate);
- ``connect``: a set-up cost paid once per new client connection, before its first request is
  read (the TCP and TLS handshakes of a real connection): keep-alive saves it.

The profile is read when a request (or, for ``connect``, a connection) arrives, so a change
applies to the next ones. It composes with the faults (a ``delay_next`` adds to the latency)
and with ``throttle`` (both caps apply). The signed ``upload_url`` points back at the proxy
(see ``Host`` above), so the storage PUTs pay the network as the API calls do.
``ResponseRecord.bytes_received`` counts each request's body bytes, for the traffic of a run.

Observation::

    proxy.stats             # a snapshot (ProxyStats): .requests Counter[(method, path)],
                            # .faults Counter[kind], .responses list[ResponseRecord] (method,
                            # path, query, status, bytes_sent, complete, in_progress, fault),
                            # .connections, .refused, .errors; .count(method, path) and
                            # .records(method, path) filter like fault rules do
    proxy.wait_for(lambda s: any(r.in_progress and r.bytes_sent > 1_000_000
                                 for r in s.responses), timeout=10)
        # evaluates the predicate on fresh snapshots each time the proxy's state changes;
        # returns its first truthy result or raises TimeoutError
    proxy.wait_idle(timeout=10)   # until no request is in progress: the client can have the
                                  # last byte a moment before the proxy books the record
    proxy.reset_stats()

Fault kinds in ``stats.faults``: the status as a string (``"503"``, ``"429"``), ``"reset"``,
``"truncate"``, ``"delay"``, ``"stall"``. ``ResponseRecord.status`` is the status the client
received (``None`` when its connection was reset instead); ``bytes_sent`` counts response body
bytes written to the client. ``stats.errors`` lists unexpected proxy failures (always empty
unless the proxy itself has a bug).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import struct
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, AsyncIterator, Callable, Iterable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
DEFAULT_KINDS = ("503", "429", "reset", "stall", "truncate")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade",
                         "expect", "trailer", "proxy-authenticate", "proxy-authorization"})
_READ_ERRORS = (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError)


class _ClientGone(Exception):
    """The client connection broke or sent something unparseable."""


class _UpstreamGone(Exception):
    """The upstream connection broke or sent something unparseable."""


# ───────────── public records ─────────────

@dataclass
class ResponseRecord:
    """One request the proxy handled and what the client got back."""

    seq: int
    method: str
    path: str
    query: str
    status: int | None = None  # status the client received; None if it got no answer
    bytes_sent: int = 0  # response body bytes written to the client
    bytes_received: int = 0  # request body bytes read from the client
    complete: bool = False  # the whole response reached the client
    in_progress: bool = True
    fault: str | None = None


def _search(pattern: str | re.Pattern[str] | None, text: str) -> bool:
    return pattern is None or re.search(pattern, text) is not None


@dataclass
class ProxyStats:
    """A consistent snapshot of the proxy's counters."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    responses: list[ResponseRecord] = field(default_factory=list)
    connections: int = 0  # client connections accepted and served
    refused: int = 0  # client connections reset at once because the proxy was paused
    errors: list[str] = field(default_factory=list)

    def records(self, method: str | None = None, path: str | None = None) -> list[ResponseRecord]:
        """Records whose method equals ``method`` and whose path matches the regex ``path``."""
        return [r for r in self.responses
                if (method is None or r.method == method.upper()) and _search(path, r.path)]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched (same filters as :meth:`records`)."""
        return len(self.records(method, path))


# ───────────── fault rules ─────────────

@dataclass
class _Fault:
    kind: str  # "status", "reset", "truncate", "delay", "stall"
    remaining: int = 1
    method: str | None = None
    path: re.Pattern[str] | None = None
    status: int = 503
    retry_after: float | None = None
    keep_bytes: int | None = None  # truncate; None: half the body
    seconds: float = 0.0  # delay, stall
    forward: bool = True  # reset

    @property
    def label(self) -> str:
        return str(self.status) if self.kind == "status" else self.kind

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method)
                and (self.path is None or self.path.search(path) is not None))


@dataclass(frozen=True)
class _RandomFaults:
    rate: float
    kinds: tuple[str, ...]
    stall_seconds: float
    retry_after: float | None
    method: str | None
    path: re.Pattern[str] | None

    def applies(self, method: str, path: str) -> bool:
        return ((self.method is None or self.method == method)
                and (self.path is None or self.path.search(path) is not None))

    def draw(self, seed: int, n: int) -> _Fault | None:
        """The fault, if any, for the ``n``-th request this rule applies to."""
        rng = random.Random(f"{seed}:{n}")
        if rng.random() >= self.rate:
            return None
        kind = rng.choice(self.kinds)
        if kind.isdigit():
            retry_after = self.retry_after if kind == "429" else None
            return _Fault("status", status=int(kind), retry_after=retry_after)
        if kind == "reset":
            return _Fault("reset", forward=rng.random() < 0.5)
        if kind == "stall":
            return _Fault("stall", seconds=self.stall_seconds)
        if kind == "truncate":
            return _Fault("truncate")
        raise ValueError(f"unknown fault kind {kind!r}")


# ───────────── network profile ─────────────

@dataclass(frozen=True)
class NetworkProfile:
    """The path to a distant service (see the module docstring)."""

    rtt: float = 0.0  # seconds, half added each way
    bandwidth: float | None = None  # bytes per second per connection and direction
    connect: float = 0.0  # seconds, once per new client connection

    @property
    def one_way(self) -> float:
        return self.rtt / 2


class _Pace:
    """Paces one body at ``rate`` bytes per second from the moment it is made: a piece is
    released when the whole stream up to its last byte could have crossed the link."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = asyncio.get_running_loop().time()
        self.sent = 0

    async def wait(self, nbytes: int) -> None:
        if self.rate is None:
            return
        self.sent += nbytes
        delay = self.start + self.sent / self.rate - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)


# ───────────── HTTP framing ─────────────

@dataclass
class _Head:
    """A parsed request or response head."""

    first_line: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in (self.get(name) or "").split(",") if t.strip()}

    def framing(self) -> tuple[str, int]:
        """("chunked", 0), ("length", n) or ("close", 0)."""
        if "chunked" in self.tokens("transfer-encoding"):
            return "chunked", 0
        length = self.get("content-length")
        if length is not None:
            return "length", int(length.split(",")[0].strip())
        return "close", 0


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line!r}")
            headers.append((name.strip(), value.strip()))
    return _Head(lines[0], headers)


def _render_head(first_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [first_line, *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read(awaitable: Any, error: type[Exception]) -> Any:
    try:
        return await awaitable
    except _READ_ERRORS as exc:
        raise error(f"{type(exc).__name__}: {exc}") from exc


async def _write(writer: asyncio.StreamWriter, data: bytes, error: type[Exception]) -> None:
    try:
        writer.write(data)
        await writer.drain()
    except OSError as exc:
        raise error(f"{type(exc).__name__}: {exc}") from exc


async def _body(reader: asyncio.StreamReader, framing: str, length: int,
                error: type[Exception]) -> AsyncIterator[bytes]:
    """Yield the payload of a body (chunked framing decoded, trailers dropped)."""
    if framing == "length":
        remaining = length
        while remaining:
            data = await _read(reader.read(min(CHUNK, remaining)), error)
            if not data:
                raise error(f"body ended {remaining} bytes short")
            remaining -= len(data)
            yield data
    elif framing == "chunked":
        while True:
            line = await _read(reader.readuntil(b"\r\n"), error)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise error(f"bad chunk size {line!r}") from exc
            if size == 0:
                while await _read(reader.readuntil(b"\r\n"), error) != b"\r\n":
                    pass
                return
            while size:
                data = await _read(reader.read(min(CHUNK, size)), error)
                if not data:
                    raise error("chunked body ended early")
                size -= len(data)
                yield data
            await _read(reader.readexactly(2), error)
    elif framing == "close":
        while data := await _read(reader.read(CHUNK), error):
            yield data


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Wait until a closing connection is closed. A cancellation here (pause or stop, which
    abort the connection anyway) is absorbed, so callers may use this in ``finally``."""
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()


def _compile(path: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    return None if path is None else re.compile(path)


def _method(method: str | None) -> str | None:
    return None if method is None else method.upper()


# ───────────── the proxy ─────────────

class FaultProxy:
    """A fault-injecting reverse proxy on 127.0.0.1 (see the module docstring)."""

    def __init__(self, upstream: str, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream
        self.seed = seed
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        # _lock guards every field below it; _changed is notified whenever one of them changes.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._rules: list[_Fault] = []
        self._random: _RandomFaults | None = None
        self._random_seen = 0  # requests the random rule applied to since it was set
        self._rate: float | None = None
        self._network = NetworkProfile()
        self._paused = False
        self._stats = ProxyStats()
        # Loop-thread only: the serving tasks and their client writers.
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._url: str | None = None

    # ── lifecycle ──

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the proxy is not started")
        return self._url

    def start(self) -> FaultProxy:
        if self._loop is not None:
            raise RuntimeError("the proxy is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy",
                                        daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                       backlog=1024))
        port = self._server.sockets[0].getsockname()[1]
        self._url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, thread = self._loop, self._thread
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(30)
            loop.close()
            self._loop = self._thread = self._server = None
            self._url = None

    def __enter__(self) -> FaultProxy:
        return self if self._loop is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = self._reset_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _reset_all(self) -> list[asyncio.Task[None]]:
        tasks = list(self._conns)
        for task, writer in list(self._conns.items()):
            _reset(writer)
            task.cancel()
        return tasks

    # ── fault controls ──

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._changed:
            self._rules.append(fault)
            self._bump()

    def fail_next(self, status: int = 503, count: int = 1, method: str | None = None,
                  path: str | None = None, retry_after: float | None = None) -> None:
        self._add(_Fault("status", count, _method(method), _compile(path), status=status,
                         retry_after=retry_after))

    def reset_next(self, count: int = 1, method: str | None = None, path: str | None = None,
                   forward: bool = True) -> None:
        self._add(_Fault("reset", count, _method(method), _compile(path), forward=forward))

    def truncate_next(self, count: int = 1, keep_bytes: int = 100, method: str | None = None,
                      path: str | None = None) -> None:
        self._add(_Fault("truncate", count, _method(method), _compile(path),
                         keep_bytes=keep_bytes))

    def delay_next(self, seconds: float, count: int = 1, method: str | None = None,
                   path: str | None = None) -> None:
        self._add(_Fault("delay", count, _method(method), _compile(path), seconds=seconds))

    def stall_next(self, seconds: float, count: int = 1, method: str | None = None,
                   path: str | None = None) -> None:
        self._add(_Fault("stall", count, _method(method), _compile(path), seconds=seconds))

    def set_random_faults(self, rate: float = 0.1, kinds: Iterable[str] = DEFAULT_KINDS,
                          stall_seconds: float = 2.0, retry_after: float | None = 1,
                          method: str | None = None, path: str | None = None) -> None:
        kinds = tuple(kinds)
        unknown = [k for k in kinds if not k.isdigit() and k not in ("reset", "stall", "truncate")]
        if unknown or not kinds or not 0 <= rate <= 1:
            raise ValueError(f"bad random faults: rate={rate}, kinds={kinds}")
        with self._changed:
            self._random = _RandomFaults(rate, kinds, stall_seconds, retry_after,
                                         _method(method), _compile(path))
            self._random_seen = 0
            self._bump()

    def clear_faults(self) -> None:
        with self._changed:
            self._rules.clear()
            self._random = None
            self._bump()

    def throttle(self, bytes_per_second: float | None) -> None:
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive or None")
        with self._changed:
            self._rate = bytes_per_second
            self._bump()

    def network(self, rtt: float | None, bandwidth: float | None = None,
                connect: float = 0.0) -> None:
        """Set the network profile (see the module docstring); ``rtt=None`` clears it."""
        if rtt is None:
            profile = NetworkProfile()
        else:
            if rtt < 0 or connect < 0 or (bandwidth is not None and bandwidth <= 0):
                raise ValueError(f"bad network profile: rtt={rtt}, bandwidth={bandwidth}, "
                                 f"connect={connect}")
            profile = NetworkProfile(rtt, bandwidth, connect)
        with self._changed:
            self._network = profile
            self._bump()

    def _profile(self) -> NetworkProfile:
        with self._lock:
            return self._network

    def pause(self) -> None:
        """Reset every open connection; refuse new ones until :meth:`resume`."""
        with self._changed:
            self._paused = True
            self._bump()
        self._call(self._pause())

    async def _pause(self) -> None:
        self._reset_all()

    def resume(self) -> None:
        with self._changed:
            self._paused = False
            self._bump()

    # ── observation ──

    def _bump(self) -> None:
        """Record a state change (call with the lock held)."""
        self._version += 1
        self._changed.notify_all()

    def _snapshot(self) -> ProxyStats:
        s = self._stats
        return ProxyStats(Counter(s.requests), Counter(s.faults),
                          [replace(r) for r in s.responses], s.connections, s.refused,
                          list(s.errors))

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return self._snapshot()

    def reset_stats(self) -> None:
        with self._changed:
            self._stats = ProxyStats()
            self._bump()

    def wait_for(self, predicate: Callable[[ProxyStats], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate(stats)`` is truthy; return that value.

        Raises TimeoutError if it is still falsy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            snapshot, version = self._snapshot(), self._version
        while True:
            result = predicate(snapshot)
            if result:
                return result
            with self._changed:
                while self._version == version:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"proxy condition not met in {timeout}s")
                    self._changed.wait(remaining)
                snapshot, version = self._snapshot(), self._version

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is in progress (then every record is final)."""
        self.wait_for(lambda s: not any(r.in_progress for r in s.responses), timeout)

    def _update(self, record: ResponseRecord, **changes: Any) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(record, name, value)
            self._bump()

    def _begin(self, method: str, target: str) -> tuple[ResponseRecord, _Fault | None]:
        """Count a request, pick its fault, and open its record."""
        parts = urlsplit(target)
        path, query = parts.path or "/", parts.query
        with self._changed:
            stats = self._stats
            stats.requests[(method, path)] += 1
            fault = None
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    fault = replace(rule, remaining=1)
                    break
            self._rules = [r for r in self._rules if r.remaining > 0]
            if fault is None and self._random is not None and self._random.applies(method, path):
                self._random_seen += 1
                fault = self._random.draw(self.seed, self._random_seen)
            if fault is not None:
                stats.faults[fault.label] += 1
            record = ResponseRecord(len(stats.responses), method, path, query,
                                    fault=fault.label if fault else None)
            stats.responses.append(record)
            self._bump()
        return record, fault

    # ── serving ──

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._changed:
            paused = self._paused
            if paused:
                self._stats.refused += 1
            else:
                self._stats.connections += 1
            self._bump()
        if paused:
            _reset(writer)
            await _closed(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            connect = self._profile().connect
            if connect:
                await asyncio.sleep(connect)
            while await self._serve_one(reader, writer):
                pass
        except (_ClientGone, _UpstreamGone) as exc:
            log.debug("connection ended: %s", exc)
        except asyncio.CancelledError:
            # Only pause() and stop() cancel these tasks. End normally: asyncio's callback on
            # client_connected_cb tasks (3.11) reports a cancelled task as an error.
            pass
        except Exception:  # a bug in the proxy: keep it visible in stats.errors
            log.exception("fault proxy failure")
            with self._changed:
                self._stats.errors.append(traceback.format_exc())
                self._bump()
        finally:
            if not writer.transport.is_closing():
                writer.close()  # flushes what is buffered, then FIN
            await _closed(writer)
            self._conns.pop(task, None)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Handle one request; True if the connection stays open for another."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client closed the connection between requests
        except (asyncio.LimitOverrunError, OSError) as exc:
            raise _ClientGone(str(exc)) from exc
        try:
            head = _parse_head(raw)
            method, target, version = head.first_line.split(" ", 2)
            framing, length = head.framing()
        except ValueError as exc:
            raise _ClientGone(f"bad request head: {exc}") from exc
        if framing == "close":
            framing = "length"  # a request without framing has no body
        method = method.upper()
        if "://" in target:  # absolute-form: keep path and query only
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = head.tokens("connection")
        keep_alive = ("close" not in connection if version == "HTTP/1.1"
                      else "keep-alive" in connection)
        record, fault = self._begin(method, target)
        profile = self._profile()
        try:
            if profile.one_way:
                await asyncio.sleep(profile.one_way)  # the request crossing the network
            if fault is not None and fault.kind == "reset" and not fault.forward:
                _reset(writer)
                return False
            if "100-continue" in head.tokens("expect"):
                await _write(writer, b"HTTP/1.1 100 Continue\r\n\r\n", _ClientGone)
            if fault is not None and fault.kind == "status":
                async for _ in _body(reader, framing, length, _ClientGone):
                    pass
                await self._answer_error(writer, record, profile, fault.status,
                                         "fault injected by the test", keep_alive,
                                         fault.retry_after)
                return keep_alive
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            return await self._forward(reader, writer, record, profile, fault, method, target,
                                       head, framing, length, keep_alive)
        finally:
            if record.in_progress:  # reset, or the exchange broke off
                self._update(record, in_progress=False)

    async def _answer_error(self, writer: asyncio.StreamWriter, record: ResponseRecord,
                            profile: NetworkProfile, status: int, message: str,
                            keep_alive: bool, retry_after: float | None = None) -> None:
        code = "fault_injected" if status != 502 else "bad_gateway"
        body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("X-Request-Id", f"faultproxy-{record.seq}"),
                   ("Connection", "keep-alive" if keep_alive else "close")]
        if retry_after is not None:
            headers.append(("Retry-After", f"{retry_after:g}"))
        first = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"
        if profile.one_way:
            await asyncio.sleep(profile.one_way)  # the answer crossing the network
        await _write(writer, _render_head(first, headers) + body, _ClientGone)
        self._update(record, status=status, bytes_sent=len(body), complete=True,
                     in_progress=False)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       record: ResponseRecord, profile: NetworkProfile, fault: _Fault | None,
                       method: str, target: str, head: _Head, framing: str, length: int,
                       keep_alive: bool) -> bool:
        try:
            up_reader, up_writer = await asyncio.open_connection(self._up_host, self._up_port)
        except OSError as exc:
            async for _ in _body(reader, framing, length, _ClientGone):
                pass
            await self._answer_error(writer, record, profile, 502,
                                     f"upstream unreachable: {exc}", keep_alive)
            return keep_alive
        headers = [(k, v) for k, v in head.headers if k.lower() not in _HOP_BY_HOP]
        up_writer.write(_render_head(f"{method} {target} HTTP/1.1",
                                     [*headers, ("Connection", "close")]))
        pump = asyncio.create_task(self._pump_request(reader, up_writer, record, profile,
                                                      framing, length))
        answer = asyncio.create_task(self._read_response_head(up_reader))
        try:
            await asyncio.wait({pump, answer}, return_when=asyncio.FIRST_COMPLETED)
            failure = pump.exception() if pump.done() else None
            if isinstance(failure, _ClientGone):
                raise failure
            try:
                response = await answer
            except _UpstreamGone as exc:
                await self._answer_error(writer, record, profile, 502,
                                         f"upstream failed: {exc}", False)
                return False
            body_done = pump.done() and pump.exception() is None
            return await self._relay(writer, up_reader, record, profile, fault, method,
                                     response, keep_alive and body_done)
        finally:
            # Synchronous steps first: pause() or stop() may cancel this task at any await.
            up_writer.transport.abort()
            for task in (pump, answer):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(pump, answer, return_exceptions=True)
            await _closed(up_writer)

    async def _pump_request(self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                            record: ResponseRecord, profile: NetworkProfile, framing: str,
                            length: int) -> None:
        """Stream the request body upstream, in the framing the client used, at the
        network's bandwidth if one is set."""
        chunked = framing == "chunked"
        pace = _Pace(profile.bandwidth)
        async for data in _body(reader, framing, length, _ClientGone):
            await pace.wait(len(data))
            self._update(record, bytes_received=record.bytes_received + len(data))
            out = b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
            await _write(up_writer, out, _UpstreamGone)
        if chunked:
            await _write(up_writer, b"0\r\n\r\n", _UpstreamGone)
        else:
            await _write(up_writer, b"", _UpstreamGone)

    @staticmethod
    async def _read_response_head(up_reader: asyncio.StreamReader) -> _Head:
        while True:
            raw = await _read(up_reader.readuntil(b"\r\n\r\n"), _UpstreamGone)
            try:
                response = _parse_head(raw)
                status = int(response.first_line.split(" ", 2)[1])
            except (ValueError, IndexError) as exc:
                raise _UpstreamGone(f"bad response head: {exc}") from exc
            if not 100 <= status < 200:
                return response

    async def _relay(self, writer: asyncio.StreamWriter, up_reader: asyncio.StreamReader,
                     record: ResponseRecord, profile: NetworkProfile, fault: _Fault | None,
                     method: str, response: _Head, keep_alive: bool) -> bool:
        """Send the upstream response to the client, applying ``fault``."""
        status = int(response.first_line.split(" ", 2)[1])
        if fault is not None and fault.kind == "reset":
            _reset(writer)
            return False
        framing, length = response.framing()
        if method == "HEAD" or status in (204, 304):
            framing, length = "length", 0
        truncate = fault is not None and fault.kind == "truncate"
        keep_alive = keep_alive and framing != "close" and not truncate
        headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP_BY_HOP]
        headers.append(("Connection", "keep-alive" if keep_alive else "close"))
        if profile.one_way:
            await asyncio.sleep(profile.one_way)  # the answer crossing the network
        await _write(writer, _render_head(response.first_line, headers), _ClientGone)
        self._update(record, status=status)

        limit = None
        if truncate:
            assert fault is not None
            limit = fault.keep_bytes
            if limit is None:
                limit = length // 2 if framing == "length" else 100
        stall_at, stall_seconds = None, 0.0
        if fault is not None and fault.kind == "stall":
            stall_at = max(1, min(length // 2, CHUNK)) if framing == "length" else CHUNK
            stall_seconds = fault.seconds
        chunked = framing == "chunked"
        pace = _Pace(profile.bandwidth)
        async for data in _body(up_reader, framing, length, _UpstreamGone):
            if limit is not None:
                data = data[:max(0, limit - record.bytes_sent)]
            if stall_at is not None and record.bytes_sent + len(data) >= stall_at:
                cut = stall_at - record.bytes_sent
                await self._send(writer, record, data[:cut], chunked, pace)
                await asyncio.sleep(stall_seconds)
                stall_at, data = None, data[cut:]
            await self._send(writer, record, data, chunked, pace)
            if limit is not None and record.bytes_sent >= limit:
                break
        if stall_at is not None:  # the body was shorter than the stall point
            await asyncio.sleep(stall_seconds)
        if truncate:
            complete = not chunked and record.bytes_sent == length
            self._update(record, complete=complete, in_progress=False)
            writer.close()
            return False
        if chunked:
            await _write(writer, b"0\r\n\r\n", _ClientGone)
        self._update(record, complete=True, in_progress=False)
        return keep_alive

    async def _send(self, writer: asyncio.StreamWriter, record: ResponseRecord, data: bytes,
                    chunked: bool, pace: _Pace) -> None:
        """Write body bytes to the client, paced by the network's bandwidth and at the
        throttled rate if those are set."""
        while data:
            with self._lock:
                rate = self._rate
            step = len(data) if rate is None else max(1, min(len(data), int(rate / 20)))
            piece, data = data[:step], data[step:]
            out = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            await pace.wait(len(piece))
            await _write(writer, out, _ClientGone)
            self._update(record, bytes_sent=record.bytes_sent + len(piece))
            if rate is not None:
                await asyncio.sleep(len(piece) / rate)
