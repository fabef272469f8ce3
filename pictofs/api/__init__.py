"""The Pictograph API client: ``Client`` and its typed errors.

Layout: ``transport.py`` (the only ``requests`` user; HTTP status → error), ``retry.py``
(pure retry decisions), ``errors.py`` (the error classes and the one mapping), ``wire.py``
and ``redaction.py`` (small wire details; keeping secrets out of text), the route modules
``images.py``, ``batch.py``, ``folders.py``, ``datasets.py``, ``annotations.py`` (one
function per route of the protocol), ``uploads.py`` (local checks and the three upload
steps), ``resources.py`` and ``client.py`` (the product docs' surface).
"""

from pictofs.api.client import Client
from pictofs.api.errors import (
    ApiError,
    AuthError,
    ConflictError,
    FolderNotEmptyError,
    ForbiddenError,
    InvalidNameError,
    NetworkError,
    NotAnImageError,
    NotFoundError,
    PayloadTooLargeError,
    PictographError,
    RateLimitError,
    ServerError,
    StreamCutShort,
    UnsupportedMediaError,
    ValidationError,
)

__all__ = [
    "ApiError",
    "AuthError",
    "Client",
    "ConflictError",
    "FolderNotEmptyError",
    "ForbiddenError",
    "InvalidNameError",
    "NetworkError",
    "NotAnImageError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PictographError",
    "RateLimitError",
    "ServerError",
    "StreamCutShort",
    "UnsupportedMediaError",
    "ValidationError",
]
