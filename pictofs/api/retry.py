"""When to try a request again, and how long to wait first (protocol §2, "Retries").

``RetryPolicy`` is a pure object: ``decide`` looks at one failed attempt (a status, no
response at all, or a body cut short) and answers with a ``Decision`` (retry or not, and the
delay). Randomness (the jitter) and sleeping are injected, so tests feed literal cases and a
fake clock. The transport is the only caller that actually waits.

Rules:
- statuses 408, 429, 500, 502, 503, 504 and failures before any response are retried;
- at most ``max_retries`` extra attempts (3);
- backoff ``min(base * 2**attempt, cap)`` times a jitter factor in [0.75, 1.25];
- a ``Retry-After`` header makes the wait ``max(Retry-After, backoff)``, and a ``Retry-After``
  over 120 s gives up at once;
- GET/HEAD/PUT/DELETE always retry; POST/PATCH only when they carry an idempotency key;
- a body cut short (fewer bytes than ``Content-Length``, or a 2xx whose JSON does not parse)
  is retried like a connection error on GET/HEAD, and on POST/PATCH with an idempotency key
  (the request took effect, and the service replays its first answer for the same key);
  never on PUT/DELETE or an unkeyed POST.
"""

from __future__ import annotations

import email.utils
import enum
import random as _random
import time
from dataclasses import dataclass, field
from typing import Callable

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ALWAYS_RETRIED_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
KEYED_METHODS = frozenset({"POST", "PATCH"})
READ_METHODS = frozenset({"GET", "HEAD"})


class Outcome(enum.Enum):
    """What went wrong with one attempt."""

    STATUS = "status"  # an answer with a status that may be retryable
    NO_RESPONSE = "no response"  # connect error, reset, timeout before any answer
    TRUNCATED = "truncated"  # a 2xx whose body was cut short or does not parse


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date. ``None`` when the
    header is missing or unreadable. ``now`` (POSIX seconds) is injectable for tests."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """Pure retry decisions; ``random`` and ``sleep`` are injected collaborators."""

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: tuple[float, float] = (0.75, 1.25)
    max_retry_after: float = 120.0
    statuses: frozenset[int] = RETRY_STATUSES
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def method_allows(self, method: str, has_idempotency_key: bool) -> bool:
        """Whether a request with this method may be sent again at all."""
        verb = method.upper()
        if verb in ALWAYS_RETRIED_METHODS:
            return True
        return verb in KEYED_METHODS and has_idempotency_key

    def backoff(self, attempt: int) -> float:
        """Wait before retry number ``attempt + 1`` (``attempt`` = retries already made)."""
        low, high = self.jitter
        factor = low + (high - low) * self.random()
        return min(self.base_delay * (2**attempt), self.max_delay) * factor

    def decide(
        self,
        attempt: int,
        method: str,
        outcome: Outcome,
        *,
        has_idempotency_key: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> Decision:
        """Retry or not after failed attempt number ``attempt`` (0 = the first retry is next)."""
        if outcome is Outcome.STATUS and status not in self.statuses:
            return Decision(False, reason=f"status {status} is not retried")
        if outcome is Outcome.TRUNCATED and method.upper() not in READ_METHODS and not (
                method.upper() in KEYED_METHODS and has_idempotency_key):
            return Decision(False, reason=f"a cut-short answer to {method.upper()} is not retried")
        if not self.method_allows(method, has_idempotency_key):
            return Decision(False, reason=f"{method.upper()} without an idempotency key")
        if attempt >= self.max_retries:
            return Decision(False, reason=f"gave up after {attempt} retries")
        if retry_after is not None and retry_after > self.max_retry_after:
            return Decision(
                False, reason=f"Retry-After {retry_after:g} s exceeds {self.max_retry_after:g} s"
            )
        delay = self.backoff(attempt)
        if retry_after is not None:
            delay = max(retry_after, delay)
        what = f"status {status}" if outcome is Outcome.STATUS else outcome.value
        return Decision(True, delay=delay, reason=what)

    def wait(self, decision: Decision) -> None:
        if decision.delay > 0:
            self.sleep(decision.delay)
