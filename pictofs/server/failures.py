"""The one error type of the server and the error body of protocol §2.

Domain code raises ``ApiFailure(status, code, message, details)``; the exception handlers in
``app`` turn it (and FastAPI's own validation and routing errors) into
``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any


class ApiFailure(Exception):
    """A refusal with an HTTP status, a snake_case code and a human message."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def bad_request(message: str, code: str = "bad_request", **details: Any) -> ApiFailure:
    return ApiFailure(400, code, message, details)


def not_found(message: str, **details: Any) -> ApiFailure:
    return ApiFailure(404, "not_found", message, details)


def conflict(message: str, **details: Any) -> ApiFailure:
    return ApiFailure(409, "conflict", message, details)


def forbidden(message: str, **details: Any) -> ApiFailure:
    return ApiFailure(403, "forbidden", message, details)


def too_large(message: str, **details: Any) -> ApiFailure:
    return ApiFailure(413, "payload_too_large", message, details)


def unsupported(message: str, code: str = "unsupported_media_type", **details: Any) -> ApiFailure:
    return ApiFailure(415, code, message, details)
