"""Idempotency keys (protocol §2): a POST or PATCH carrying ``Idempotency-Key`` is answered,
for 24 hours, with the status and body of the first response to that key, per organization
and route (the request path).

Implemented as a FastAPI route class, so it wraps exactly the API routes: the key is resolved
to an organization first (an unknown key just runs the handler, which answers 401), concurrent
requests with one key wait for each other, and answers below 500 are stored, errors included.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Coroutine

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pictofs.server.failures import ApiFailure
from pictofs.server.handlers import failure_response, http_error_response, validation_response

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
_METHODS = ("POST", "PATCH")
_MAX_KEY_LENGTH = 255


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
                return failure_response(failure)
            except RequestValidationError as exc:
                return validation_response(exc)
            except HTTPException as exc:
                return http_error_response(exc)

        async def idempotent(request: Request) -> Response:
            key = request.headers.get(HEADER)
            api_key = request.headers.get("X-API-Key")
            if request.method not in _METHODS or not key or not api_key \
                    or len(key) > _MAX_KEY_LENGTH:
                return await handler(request)
            server = request.app.state.server
            caller = await run_in_threadpool(server.db.caller_for_key, api_key)
            if caller is None:
                return await handler(request)
            org = caller.organization_id
            route = f"{request.method} {request.url.path}"
            async with server.idempotency_locks.hold((org, key, route)):
                found = await run_in_threadpool(server.db.idempotent_response, org, key, route)
                if found is not None:
                    status, body = found
                    log.debug("replaying idempotent response for %s", route)
                    return Response(body, status_code=status, media_type="application/json",
                                    headers={REPLAY_HEADER: "true"})
                response = await run(request)
                body = getattr(response, "body", None)
                if response.status_code < 500 and isinstance(body, bytes) \
                        and not await _body_was_lost(request, response):
                    await run_in_threadpool(server.db.remember_response, org, key, route,
                                            response.status_code, body)
                return response

        return idempotent
