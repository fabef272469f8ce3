"""The API client's typed errors and the ONE mapping from an HTTP answer to an exception.

Every class here is also a domain error of ``pictofs.errors`` where one fits (a 404 is a
``NotFound``, a 409 an ``AlreadyExists``, ...), so the core catches domain errors whether they
came from the service or from a local check. ``error_from_response`` is the only place that
reads a status code; the transport calls it for every non-2xx answer.

Error bodies (protocol §2): ``{"error": {"code", "message", "details"}}``, and the legacy
``{"detail": "..."}`` and ``{"detail": [{"loc", "msg"}]}``. Messages carry the request id
(``X-Request-Id``). Nothing here ever sees the API key: the transport removes it from a body
before the body reaches this module.
"""

from __future__ import annotations

import http
import json
from typing import Any, Mapping

from pictofs import errors as domain
from pictofs.api.retry import parse_retry_after


class PictographError(domain.PictofsError):
    """Base of every error the API client raises."""


class ApiError(PictographError):
    """An error answer of the service (or a local check that stands in for one, with
    ``request_id`` None). ``status`` is the HTTP status, ``code`` the snake_case slug."""

    def __init__(
        self,
        status: int | None,
        code: str | None,
        message: str,
        request_id: str | None = None,
        details: Any = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details
        super().__init__(self._render())

    @property
    def status_code(self) -> int | None:
        """The same as ``status`` (the name the official SDK uses)."""
        return self.status

    def _render(self) -> str:
        meta = []
        if self.status is not None:
            meta.append(f"HTTP {self.status}")
        if self.code:
            meta.append(self.code)
        if self.request_id:
            meta.append(f"request id {self.request_id}")
        return f"{self.message} ({', '.join(meta)})" if meta else self.message

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the wider constructor
        args = (self.status, self.code, self.message, self.request_id, self.details)
        return (type(self), args, dict(self.__dict__))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class ValidationError(ApiError):
    """400 / 422 / 415: the request was refused as invalid."""


class InvalidNameError(ValidationError, domain.InvalidName):
    """A file or folder name that breaks the name rules (checked locally or by the service)."""


class UnsupportedMediaError(ValidationError, domain.Unsupported):
    """415: an extension the service does not take."""


class NotAnImageError(ValidationError, domain.NotAnImage):
    """415: bytes that are not a decodable image."""


class FolderNotEmptyError(ValidationError, domain.NotEmpty):
    """400 on a folder delete: the folder still holds images or folders."""


class AuthError(ApiError, domain.PermissionDenied):
    """401: the key is missing, malformed or revoked."""


class ForbiddenError(ApiError, domain.PermissionDenied):
    """403: the key's role is too low (or a signed URL expired or was tampered with)."""


class NotFoundError(ApiError, domain.NotFound):
    """404: no such thing, or it belongs to another organization."""


class ConflictError(ApiError, domain.AlreadyExists):
    """409 (or a 400 saying "already exists"): the name is taken in that folder."""


class PayloadTooLargeError(ApiError, domain.TooLarge):
    """413: over the 50 MB limit."""


class RateLimitError(ApiError):
    """429: rate limited; ``retry_after`` is the wait the service asked for, in seconds."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


class ServerError(ApiError):
    """5xx: a fault on the service's side."""


class NetworkError(PictographError, domain.Unavailable):
    """No usable answer: connection refused or reset, timeout, a body cut short."""


class AnswerCutShort(NetworkError, domain.CutShort):
    """A 2xx answer whose body ended early or does not parse (not retried: not a GET)."""


class StreamCutShort(NetworkError, domain.CutShort):
    """An image stream that ended early after some of its bytes were handed over."""


_NOT_AN_IMAGE_HINTS = ("not an image", "not a decodable", "not decodable", "cannot identify",
                       "cannot be decoded", "could not decode", "not a valid image")


def error_from_response(
    status: int, body: Any = None, headers: Mapping[str, str] | None = None
) -> ApiError:
    """The exception for a non-2xx answer. ``body`` may be parsed JSON, text, bytes or None;
    ``headers`` is any case-insensitive mapping (or a plain dict)."""
    code, message, details = parse_error_body(body)
    if not message:
        message = _reason_phrase(status)
    request_id = _header(headers, "X-Request-Id")
    cls = _class_for(status, code, message)
    if cls is RateLimitError:
        retry_after = parse_retry_after(_header(headers, "Retry-After"))
        return RateLimitError(status, code, message, request_id, details, retry_after=retry_after)
    return cls(status, code, message, request_id, details)


def _class_for(status: int, code: str | None, message: str) -> type[ApiError]:
    lowered = message.lower()
    slug = (code or "").lower()
    if status == 400 and "already exists" in lowered:
        return ConflictError
    if status == 400 and ("not empty" in lowered or slug in ("not_empty", "directory_not_empty")):
        return FolderNotEmptyError
    if status == 415:
        says_not_an_image = any(hint in lowered for hint in _NOT_AN_IMAGE_HINTS)
        if slug in ("not_an_image", "invalid_image", "decompression_bomb") or says_not_an_image:
            return NotAnImageError
        return UnsupportedMediaError
    if status in (400, 422):
        return ValidationError
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ApiError)


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}


def parse_error_body(body: Any) -> tuple[str | None, str, Any]:
    """``(code, message, details)`` from any of the three error body shapes, or from text."""
    data = _as_json(body)
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return (_text_or_none(error.get("code")), str(error.get("message") or ""),
                    error.get("details"))
        if isinstance(error, str):
            return None, error, None
        if "detail" in data:
            return None, _legacy_detail_message(data["detail"]), data["detail"]
        if isinstance(data.get("message"), str):
            return _text_or_none(data.get("code")), data["message"], None
        return None, "", None
    if isinstance(data, str):
        return None, data.strip()[:500], None
    return None, "", None


def _legacy_detail_message(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                msg = str(item.get("msg", ""))
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(p for p in parts if p)
    if isinstance(detail, dict):
        return str(detail.get("message") or detail.get("msg") or json.dumps(detail))
    return str(detail)


def _as_json(body: Any) -> Any:
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError:
            return body
    return body


def _text_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP error {status}"
