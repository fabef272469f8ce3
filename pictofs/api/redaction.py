"""Keeping secrets out of text: the API key and signed upload URLs' tokens.

``Redactor`` replaces known secrets in messages built from error bodies and exception texts;
its ``repr`` shows none of them, so a traceback that prints arguments stays clean.
``redact_signed_url`` is what logs and messages show of a signed URL.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MASK = "[redacted]"


class Redactor:
    """Replaces each of its secrets in a text with ``[redacted]``."""

    __slots__ = ("_secrets",)

    def __init__(self, *secrets: str) -> None:
        self._secrets = tuple(s for s in secrets if s)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def with_more(self, *secrets: str) -> Redactor:
        return Redactor(*self._secrets, *secrets)

    def __repr__(self) -> str:
        return "Redactor(…)"


def redact_signed_url(url: str) -> str:
    """A signed URL as logs may show it: host and path prefix, no token, no query."""
    parts = urlsplit(url)
    prefix = parts.path.rsplit("/", 1)[0]
    return f"{parts.scheme}://{parts.netloc}{prefix}/…"
