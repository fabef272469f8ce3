"""The circuit breaker trips when the service cannot be reached, not when an answer was cut
short (filesystem §4 "Service unreachable"): a truncated body fails that call only."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from pictofs.api.errors import AnswerCutShort, NetworkError, StreamCutShort
from pictofs.core.breaker import CircuitBreaker, GuardedRemote
from pictofs.errors import Unavailable


class FakeRemote:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def stat(self) -> None:
        raise self.error

    def open_bytes(self, image_id: str) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        error = self.error

        @contextlib.contextmanager
        def opened() -> Iterator[Iterator[bytes]]:
            def chunks() -> Iterator[bytes]:
                yield b"first"
                raise error
            yield chunks()

        return opened()


@pytest.mark.parametrize("error, trips", [
    (AnswerCutShort("POST /images/register: answer cut short"), False),
    (StreamCutShort("GET /images/x: stream cut short"), False),
    (NetworkError("GET /images/: connection refused"), True),
    (Unavailable("unreachable"), True),
])
def test_only_an_unreachable_service_trips_the_breaker(error: Exception, trips: bool) -> None:
    for use in ("call", "stream"):
        breaker = CircuitBreaker(probe=lambda: None, interval=3600)
        remote = GuardedRemote(FakeRemote(error), breaker)
        try:
            with pytest.raises(type(error)):
                if use == "call":
                    remote.stat()
                else:
                    with remote.open_bytes("x") as chunks:
                        for _ in chunks:
                            pass
            assert breaker.is_open is trips, use
        finally:
            breaker.close()
