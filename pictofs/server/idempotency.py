"""Idempotency keys (protocol §2, §5): a POST or PATCH carrying ``Idempotency-Key`` is answered,
for 24 hours, with the status and body of the first response to that key.

A record is scoped by the API key that sent it (the key's id) and carries a fingerprint of the
request: method, path and query, and the sha256 of the body. The same idempotency key with
another request is refused with 422 ``idempotency_key_reused``, never answered with another
request's answer (as Stripe does). Only verdicts of the route itself are stored: 2xx answers
and the domain refusals 400, 404, 409, 413 and 415. Never stored, so that a retry runs again:
401 and 403 (the key or its role), 422 (validation: nothing ran), 429, 5xx, and the answer to a
body that never arrived whole.

Implemented as a FastAPI route class, so it wraps exactly the API routes: the caller is the one
``middleware.RequestGate`` resolved before the body was read (no caller: the handler runs and
answers 401), and concurrent requests with one key wait for each other.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Coroutine

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pictofs.server.db import Caller
from pictofs.server.failures import ApiFailure
from pictofs.server.handlers import failure_response, http_error_response, validation_response

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
_METHODS = ("POST", "PATCH")
_MAX_KEY_LENGTH = 255
_STORED_REFUSALS = (400, 404, 409, 413, 415)


def _worth_storing(status: int) -> bool:
    return 200 <= status < 300 or status in _STORED_REFUSALS


async def fingerprint(request: Request) -> str:
    """sha256 of the method, the path and query, and the body."""
    digest = hashlib.sha256()
    for part in (request.method, request.url.path, request.url.query):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\n")
    digest.update(await request.body())
    return digest.hexdigest()


def _reused(key: str) -> Response:
    failure = ApiFailure(422, "idempotency_key_reused",
                         "this Idempotency-Key was sent with another request (method, path or "
                         "body) in the last 24 hours; use a new key for a new request",
                         {"idempotency_key": key})
    return failure_response(failure)


async def _body_was_lost(request: Request, response: Response) -> bool:
    """A request whose body never arrived whole (the client went away mid-send) was not
    handled: its error answer must not be replayed to the retry that resends the body."""
    if await request.is_disconnected():
        return True
    return response.status_code == 400 and b"error parsing the body" in (
        getattr(response, "body", b"") or b"")


class IdempotentRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            """The handler with its own errors rendered, so they can be remembered too."""
            try:
                return await handler(request)
            except ApiFailure as failure:
                return failure_response(failure, request)
            except RequestValidationError as exc:
                return validation_response(exc)
            except HTTPException as exc:
                return http_error_response(exc)

        async def idempotent(request: Request) -> Response:
            key = request.headers.get(HEADER)
            who: Caller | None = request.scope.get("state", {}).get("caller")
            if request.method not in _METHODS or not key or who is None \
                    or len(key) > _MAX_KEY_LENGTH:
                return await handler(request)
            server = request.app.state.server
            request_print = await fingerprint(request)
            async with server.idempotency_locks.hold((who.key_id, key)):
                found = await run_in_threadpool(server.db.idempotent_response, who.key_id, key)
                if found is not None:
                    stored_print, status, body = found
                    if stored_print != request_print:
                        return _reused(key)
                    log.debug("replaying idempotent response for %s %s", request.method,
                              request.url.path)
                    return Response(body, status_code=status, media_type="application/json",
                                    headers={REPLAY_HEADER: "true"})
                response = await run(request)
                body = getattr(response, "body", None)
                if _worth_storing(response.status_code) and isinstance(body, bytes) \
                        and not await _body_was_lost(request, response):
                    await run_in_threadpool(server.db.remember_response, who.key_id, key,
                                            request_print, response.status_code, body)
                return response

        return idempotent
