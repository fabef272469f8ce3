"""Per-request plumbing: ``X-Request-Id`` on every response, request counters for ``/metrics``,
a 404 for paths with an encoded slash (routing works on decoded paths, and no name may hold a
``/``), and a last-resort 500 in the error shape of protocol §2 (with the traceback logged).

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
from typing import AsyncIterator, Hashable

from starlette.datastructures import MutableHeaders
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
