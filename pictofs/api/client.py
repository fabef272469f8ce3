"""``Client``: the Python surface of the product docs, over one ``Transport``.

``Client()`` with no arguments finds its connection as protocol §1 says (argument or key
file > ``PICTOGRAPH_API_KEY`` / ``PICTOGRAPH_BASE_URL`` > ``~/.pictograph/config.toml`` >
the default base URL). With no key anywhere it raises ``ConfigError`` at once rather than
sending requests bound to answer 401. ``repr(client)`` shows the base URL and where the key
came from, never the key.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pictofs.api import datasets as datasets_api
from pictofs.api.resources import AnnotationsResource, ImagesResource, ProjectsResource
from pictofs.api.retry import RetryPolicy
from pictofs.api.transport import DEFAULT_TIMEOUT, Timeout, Transport
from pictofs.config import ENV_KEY, resolve_connection
from pictofs.errors import ConfigError

log = logging.getLogger(__name__)


class Client:
    """``client.images``, ``client.projects`` (also ``client.datasets``), ``client.annotations``
    and ``client.me()``. Safe to share between threads; ``close()`` (or ``with``) frees the
    connection pool."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        *,
        pool_size: int = 16,
    ) -> None:
        connection = resolve_connection(base_url=base_url, api_key=api_key, key_file=key_file)
        if not connection.api_key:
            raise ConfigError(
                "no API key configured: pass api_key= or key_file=, set "
                f"{ENV_KEY}, or run `pictograph login` to write ~/.pictograph/config.toml"
            )
        self._key_source = connection.key_source
        self._transport = Transport(connection.base_url, connection.api_key, timeout=timeout,
                                    retry=RetryPolicy(max_retries=max_retries),
                                    pool_size=pool_size)
        self.images = ImagesResource(self._transport)
        self.projects = ProjectsResource(self._transport)
        self.datasets = self.projects
        self.annotations = AnnotationsResource(self._transport)
        log.debug("client for %s (key from %s)", connection.base_url, connection.key_source)

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r}, key_source={self._key_source!r})"

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def transport(self) -> Transport:
        """The underlying transport, for the route modules (``pictofs.api.images`` ...)."""
        return self._transport

    def me(self) -> dict[str, Any] | None:
        """``{"organization_id", "organization_name", "role", "key_prefix"}``, or None when
        the service does not say (it answers 404)."""
        return datasets_api.me(self._transport)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
