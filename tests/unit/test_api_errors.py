"""The one mapping from an HTTP answer to a typed error, table-driven."""

from __future__ import annotations

import json
import pickle

import pytest

from pictofs import errors as domain
from pictofs.api import errors as api
from pictofs.api.wire import derive_idempotency_key, is_idempotency_key


def envelope(message: str, code: str = "some_code", details: object = None) -> str:
    return json.dumps({"error": {"code": code, "message": message, "details": details or {}}})


# (status, body, expected class, also an instance of these domain errors)
TABLE = [
    (400, envelope("bad directory_path"), api.ValidationError, ()),
    (422, envelope("filename: field required"), api.ValidationError, ()),
    (400, envelope("Image 'x.jpg' already exists in /cars"), api.ConflictError,
     (domain.AlreadyExists,)),
    (400, {"detail": "A file with this name already exists"}, api.ConflictError,
     (domain.AlreadyExists,)),
    (400, envelope("Directory is not empty"), api.FolderNotEmptyError, (domain.NotEmpty,)),
    (401, envelope("Invalid API key", "unauthorized"), api.AuthError, (domain.PermissionDenied,)),
    (403, envelope("Role viewer cannot upload", "forbidden"), api.ForbiddenError,
     (domain.PermissionDenied,)),
    (404, envelope("Image not found", "not_found"), api.NotFoundError, (domain.NotFound,)),
    (409, envelope("Name taken", "conflict"), api.ConflictError, (domain.AlreadyExists,)),
    (413, envelope("File exceeds 50 MB", "payload_too_large"), api.PayloadTooLargeError,
     (domain.TooLarge,)),
    (415, envelope("Unsupported file extension '.txt'", "unsupported_media_type"),
     api.UnsupportedMediaError, (domain.Unsupported,)),
    (415, envelope("The stored bytes are not a decodable image", "unsupported_media_type"),
     api.NotAnImageError, (domain.NotAnImage,)),
    (415, envelope("whatever", "not_an_image"), api.NotAnImageError, (domain.NotAnImage,)),
    (415, envelope("too many pixels", "decompression_bomb"), api.NotAnImageError,
     (domain.NotAnImage,)),
    (429, envelope("Slow down", "rate_limited"), api.RateLimitError, ()),
    (500, envelope("boom", "internal_error"), api.ServerError, ()),
    (502, "<html>Bad Gateway</html>", api.ServerError, ()),
    (503, None, api.ServerError, ()),
    (599, b"", api.ServerError, ()),
    (405, envelope("Method Not Allowed"), api.ApiError, ()),
    (408, None, api.ApiError, ()),
    (418, {"detail": "teapot"}, api.ApiError, ()),
]


@pytest.mark.parametrize("status, body, cls, domain_classes", TABLE)
def test_status_maps_to_class(status: int, body: object, cls: type, domain_classes: tuple) -> None:
    error = api.error_from_response(status, body, {"X-Request-Id": "req-123"})
    assert type(error) is cls
    assert isinstance(error, api.ApiError)
    assert isinstance(error, api.PictographError)
    assert isinstance(error, domain.PictofsError)
    for extra in domain_classes:
        assert isinstance(error, extra)
    assert error.status == status == error.status_code
    assert error.request_id == "req-123"
    assert "req-123" in str(error)
    assert str(status) in str(error)


def test_validation_family_are_validation_errors() -> None:
    for cls in (api.InvalidNameError, api.UnsupportedMediaError, api.NotAnImageError,
                api.FolderNotEmptyError):
        assert issubclass(cls, api.ValidationError)
    assert issubclass(api.InvalidNameError, domain.InvalidName)
    assert issubclass(api.NetworkError, domain.Unavailable)
    assert not issubclass(api.NetworkError, api.ApiError)


# (body, expected code, expected message, expected details)
BODIES = [
    (envelope("Nope", "not_found", {"id": "x"}), "not_found", "Nope", {"id": "x"}),
    ({"error": {"code": "conflict", "message": "Taken"}}, "conflict", "Taken", None),
    ({"detail": "Image not found"}, None, "Image not found", "Image not found"),
    ({"detail": [{"loc": ["body", "filename"], "msg": "field required"},
                 {"loc": ["query", "limit"], "msg": "must be ≤ 1000"}]},
     None, "filename: field required; query.limit: must be ≤ 1000", None),
    ({"error": "plain words"}, None, "plain words", None),
    ("not json at all", None, "not json at all", None),
    (b'{"detail": "bytes body"}', None, "bytes body", "bytes body"),
    (None, None, "", None),
    ({"unexpected": 1}, None, "", None),
]


@pytest.mark.parametrize("body, code, message, details", BODIES)
def test_parse_error_body(body: object, code: str | None, message: str, details: object) -> None:
    parsed_code, parsed_message, parsed_details = api.parse_error_body(body)
    assert parsed_code == code
    assert parsed_message == message
    if details is not None:
        assert parsed_details == details


def test_legacy_list_details_are_kept() -> None:
    body = {"detail": [{"loc": ["body", "name"], "msg": "too long"}]}
    error = api.error_from_response(422, body)
    assert error.details == body["detail"]
    assert "name: too long" in str(error)


def test_message_falls_back_to_the_reason_phrase() -> None:
    assert api.error_from_response(503, None).message == "Service Unavailable"
    assert api.error_from_response(599, None).message == "HTTP error 599"


def test_rate_limit_carries_retry_after() -> None:
    error = api.error_from_response(429, envelope("slow"), {"retry-after": "7"})
    assert isinstance(error, api.RateLimitError)
    assert error.retry_after == 7.0
    assert api.error_from_response(429, None).retry_after is None


def test_headers_lookup_is_case_insensitive_for_plain_dicts() -> None:
    error = api.error_from_response(404, None, {"x-request-id": "abc"})
    assert error.request_id == "abc"


def test_repr_and_str_are_readable() -> None:
    error = api.error_from_response(409, envelope("Name taken", "conflict"),
                                    {"X-Request-Id": "r1"})
    assert str(error) == "Name taken (HTTP 409, conflict, request id r1)"
    assert repr(error) == ("ConflictError(status=409, code='conflict', message='Name taken', "
                           "request_id='r1')")
    local = api.PayloadTooLargeError(413, None, "too big")
    assert str(local) == "too big (HTTP 413)"
    assert str(api.ApiError(None, None, "plain")) == "plain"


def test_errors_survive_pickling() -> None:
    error = api.error_from_response(429, envelope("slow", "rate_limited"),
                                    {"Retry-After": "3", "X-Request-Id": "r9"})
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is api.RateLimitError
    assert (copy.status, copy.code, copy.message, copy.request_id, copy.retry_after) == (
        429, "rate_limited", "slow", "r9", 3.0)
    assert str(copy) == str(error)


@pytest.mark.parametrize(
    "seed, step, same_as_seed",
    [("0123456789abcdef0123456789abcdef", "", True),
     ("0123456789abcdef0123456789abcdef", "register", False),
     ("job-7", "", False),
     ("job-7", "upload-url", False)],
)
def test_idempotency_keys_are_32_hex(seed: str, step: str, same_as_seed: bool) -> None:
    key = derive_idempotency_key(seed, step)
    assert is_idempotency_key(key)
    assert (key == seed) is same_as_seed
    assert derive_idempotency_key(seed, step) == key  # stable
    assert derive_idempotency_key(seed, step + "x") != key
