"""The circuit breaker in front of the Remote (filesystem §4, "Service unreachable").

A request that fails to connect or times out after its retries raises ``Unavailable``; that
trips the breaker. An answer cut short (``CutShort``: the service did answer) fails that call
only. While it is open every call fails with ``Unavailable`` at once (the mount
answers uncached ``open``/``lookup`` with ``EIO`` without waiting), cached images and listings
keep working because they do not reach the remote, and a background probe closes the breaker
as soon as the service answers again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from typing import Any, Callable, Iterator

from pictofs.errors import CutShort, Unavailable

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(self, probe: Callable[[], None], interval: float = 1.0) -> None:
        self._probe = probe
        self._interval = interval
        self._lock = threading.Lock()  # guards _open and _prober
        self._open = False
        self._prober: threading.Thread | None = None
        self._stopped = threading.Event()
        self.trips = 0
        self.refused = 0  # calls failed at once while open (no request sent)

    @property
    def is_open(self) -> bool:
        return self._open

    def allows_requests(self) -> bool:
        """False while open (counted as a refused call, like ``call`` would)."""
        if self._open:
            self.refused += 1
            return False
        return True

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._open:
            self.refused += 1
            raise Unavailable("the service is unreachable (waiting for it to come back)")
        try:
            return fn(*args, **kwargs)
        except CutShort:
            raise
        except Unavailable:
            self.trip()
            raise

    def call_without_tripping(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Refused at once while open, like ``call``; a failure leaves the breaker as it is."""
        if self._open:
            self.refused += 1
            raise Unavailable("the service is unreachable (waiting for it to come back)")
        return fn(*args, **kwargs)

    def trip(self) -> None:
        with self._lock:
            if self._open or self._stopped.is_set():
                return
            self._open = True
            self.trips += 1
            self._prober = threading.Thread(target=self._probe_until_back, daemon=True,
                                             name="pictofs-breaker-probe")
            self._prober.start()
        log.warning("service unreachable: serving cached images and listings only until it "
                    "is back")

    def _probe_until_back(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._probe()
            except Unavailable:
                continue
            except Exception:  # any answer at all means the service is reachable
                log.debug("probe answered with an error; treating the service as reachable",
                          exc_info=True)
            with self._lock:
                self._open = False
                self._prober = None
            log.warning("service reachable again")
            return

    def close(self) -> None:
        """Stop the probe thread (at unmount)."""
        self._stopped.set()


class GuardedRemote:
    """A Remote whose every call goes through a CircuitBreaker. With ``trips=False`` its
    calls are refused while the breaker is open but their failures do not trip it: the
    upload queue's remote, whose requests are not retried by the transport (one reset
    connection must not turn every uncached read into ``EIO``), streams (``open_bytes``,
    which the queue uses to compare an image it may adopt) included."""

    def __init__(self, remote: Any, breaker: CircuitBreaker, trips: bool = True) -> None:
        self._remote = remote
        self.breaker = breaker
        self._trips = trips
        self._call = breaker.call if trips else breaker.call_without_tripping

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._remote, name)
        if not callable(target):
            return target

        @functools.wraps(target)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self._call(target, *args, **kwargs)

        return guarded

    def open_bytes(self, image_id: str) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """Streams are guarded where the request happens: on enter, and while iterating."""
        return _guarded_stream(self._remote.open_bytes(image_id), self.breaker, self._trips)


@contextlib.contextmanager
def _guarded_stream(opener: contextlib.AbstractContextManager[Iterator[bytes]],
                    breaker: CircuitBreaker, trips: bool) -> Iterator[Iterator[bytes]]:
    call = breaker.call if trips else breaker.call_without_tripping
    stream = call(opener.__enter__)
    try:
        yield _guarded_chunks(stream, breaker) if trips else stream
    except BaseException as exc:
        if not opener.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        opener.__exit__(None, None, None)


def _guarded_chunks(stream: Iterator[bytes], breaker: CircuitBreaker) -> Iterator[bytes]:
    try:
        yield from stream
    except CutShort:
        raise
    except Unavailable:
        breaker.trip()
        raise
