"""Per-request plumbing: ``X-Request-Id`` on every response, request counters for ``/metrics``,
a 404 for paths with an encoded slash (routing works on decoded paths, and no name may hold a
``/``), and a last-resort 500 in the error shape of protocol §2 (with the traceback logged).

``RequestGate`` runs before any route: under the API prefix it resolves ``X-API-Key`` before a
byte of the body is read (401 otherwise), and it bounds every request body but the storage
PUT's (which limits its own while streaming): a ``Content-Length`` over the limit is refused
with 413 before the body is read, and a body without one (chunked) is counted as it arrives
and refused once it passes the limit. The bodies it lets through are held whole (they are at
most the limit) and handed to the application as they came.

Metrics text, one line per (method, route template, status)::

    pictofs_http_requests_total{method="GET",route="/api/v1/developer/images/",status="200"} 3

``route`` is the FastAPI route path as declared, or ``unmatched`` when no route matched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Hashable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pictofs.server.failures import error_body

log = logging.getLogger(__name__)

METRIC = "pictofs_http_requests_total"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request counters; safe to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _counts
        self._counts: dict[tuple[str, str, int], int] = {}

    def count(self, method: str, route: str, status: int) -> None:
        key = (method, route, status)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def render(self) -> str:
        with self._lock:
            items = sorted(self._counts.items())
        lines = [f"# HELP {METRIC} HTTP requests by method, route template and status.",
                 f"# TYPE {METRIC} counter"]
        for (method, route, status), count in items:
            lines.append(f'{METRIC}{{method="{_label(method)}",route="{_label(route)}",'
                         f'status="{status}"}} {count}')
        return "\n".join(lines) + "\n"


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it.

    Used only from the event loop thread (both listening ports share one loop), so the
    table needs no thread lock.
    """

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._locks.pop(key, None)


class RequestContext:
    """ASGI middleware: request id, metrics, and a JSON 500 for unexpected exceptions."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
                status.append(message["status"])
            await send(message)

        try:
            if b"%2f" in scope.get("raw_path", b"").lower():
                # No name (dataset, folder or file) may hold a "/": an encoded slash names
                # nothing, and decoding it would address another dataset or folder.
                response = JSONResponse(error_body(
                    "not_found", "no such resource: names cannot contain '/'"), status_code=404)
                await response(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error on %s %s (request %s)", scope["method"],
                          scope.get("path"), request_id)
            if not status:
                response = JSONResponse(
                    error_body("internal_error", "internal server error",
                               {"request_id": request_id}), status_code=500)
                await response(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.count(scope["method"], template, status[0] if status else 500)


class RequestGate:
    """ASGI middleware: the API key before the body, and a size limit on bodies. With
    ``refuse_key`` (the storage listener of the hosted profile), a request that carries an
    API key at all is refused: a client must never send its key to the storage host.

    ``authenticate(key)`` returns the caller of a key, or None for an unknown (or revoked)
    one; it runs in the thread pool. The caller is left in ``scope["state"]["caller"]``
    for the route dependencies, so a request looks its key up once.
    """

    def __init__(self, app: ASGIApp, authenticate: Callable[[str], Any], api_prefix: str,
                 streamed_prefix: str, limit: int, refuse_key: bool = False) -> None:
        self.app = app
        self.refuse_key = refuse_key  # a storage listener apart: no request may carry a key
        self.authenticate = authenticate
        self.api_prefix = api_prefix
        self.streamed_prefix = streamed_prefix
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope.get("path", "")
        announced = headers.get("content-length")
        has_body = (announced not in (None, "0")
                    or "chunked" in headers.get("transfer-encoding", "").lower())
        if self.refuse_key and "x-api-key" in headers:
            await self._refuse(scope, send, has_body, 400, "key_not_allowed",
                               "storage takes no API key: the signed URL is the permission")
            return
        if path.startswith(self.api_prefix):
            key = headers.get("x-api-key")
            if not key:
                await self._refuse(scope, send, has_body, 401, "unauthorized",
                                   "missing X-API-Key header")
                return
            found = await run_in_threadpool(self.authenticate, key)
            if found is None:
                await self._refuse(scope, send, has_body, 401, "unauthorized",
                                   "invalid API key")
                return
            scope.setdefault("state", {})["caller"] = found
        if path.startswith(self.streamed_prefix) or not has_body:
            await self.app(scope, receive, send)
            return
        if announced is not None:
            if not announced.isdigit():
                await self._refuse(scope, send, True, 400, "bad_request",
                                   "Content-Length is not a number")
                return
            if int(announced) > self.limit:
                await self._too_large(scope, send)
                return
        body = await self._read(receive)
        if body is None:
            await self._too_large(scope, send)
            return
        if isinstance(body, Exception):
            await self._refuse(scope, send, True, 400, "incomplete_body",
                               "the client disconnected before the whole body arrived")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | Exception | None:
        """The whole body; None once it passes the limit (nothing more is read), or an
        exception if the client went away first."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return ConnectionError("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await self._refuse(scope, send, True, 413, "payload_too_large",
                           f"the request body is over the limit of {self.limit} bytes",
                           limit=self.limit)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, unread: bool, status: int, code: str,
                      message: str, **details: Any) -> None:
        """Answer without reading the body; the connection is closed after an answer that
        leaves a body unread (so the unread bytes are never taken for the next request)."""
        headers = {"Connection": "close"} if unread else None
        response = JSONResponse(error_body(code, message, details), status_code=status,
                                headers=headers)

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, nothing, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``body`` once, then waits on the real one (for a
    disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
