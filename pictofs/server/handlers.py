"""Exception handlers: every error leaves the server as ``{"error": {"code", "message",
"details"}}`` (protocol §2), including FastAPI's own 422 validation errors and the 404/405 of
unknown routes.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from pictofs.server.failures import ApiFailure, error_body

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 411: "length_required",
               413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error"}


def failure_response(failure: ApiFailure, request: Request | None = None) -> JSONResponse:
    """The error answer; a request's server profile may word it its own way (a name
    collision is 400 on the hosted profile)."""
    state = getattr(request.app.state, "server", None) if request is not None else None
    if state is not None:
        failure = state.profile.failure(failure)
    if failure.status >= 500:
        log.error("server failure: %s", failure.message)
    return JSONResponse(failure.body(), status_code=failure.status)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": _jsonable(list(err.get("loc", ()))), "msg": str(err.get("msg", "")),
               "type": str(err.get("type", ""))} for err in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return JSONResponse(error_body("validation_error", message, {"errors": errors}),
                        status_code=422)


def http_error_response(exc: HTTPException) -> Response:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    return JSONResponse(error_body(code, message), status_code=exc.status_code,
                        headers=dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    async def on_failure(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiFailure)
        return failure_response(exc, request)

    async def on_validation(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc)

    async def on_http(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return http_error_response(exc)

    app.add_exception_handler(ApiFailure, on_failure)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
