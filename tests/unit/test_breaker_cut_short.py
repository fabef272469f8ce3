"""The circuit breaker trips when the service cannot be reached, not when an answer was cut
short (filesystem §4 "Service unreachable"): a truncated body fails that call only."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from pictofs.api.errors import AnswerCutShort, NetworkError, StreamCutShort
from pictofs.remote.breaker import CircuitBreaker, GuardedRemote
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


def test_the_upload_queues_remote_never_trips_the_breaker_but_waits_while_it_is_open() -> None:
    """``trips=False`` (the upload queue's remote, whose requests are sent once): a failed
    call or stream leaves the breaker closed; once the read side opened it, calls are refused
    at once without reaching the remote."""
    breaker = CircuitBreaker(probe=lambda: None, interval=3600)
    remote = GuardedRemote(FakeRemote(NetworkError("PUT: connection reset")), breaker,
                           trips=False)
    try:
        with pytest.raises(NetworkError):
            remote.stat()
        with pytest.raises(NetworkError):
            with remote.open_bytes("x") as chunks:
                for _ in chunks:
                    pass
        assert not breaker.is_open
        breaker.trip()  # as a read that cannot reach the service does
        with pytest.raises(Unavailable, match="unreachable") as refused:
            remote.stat()
        assert not isinstance(refused.value, NetworkError)  # refused, not sent
        with pytest.raises(Unavailable, match="unreachable"):
            remote.open_bytes("x").__enter__()
    finally:
        breaker.close()
