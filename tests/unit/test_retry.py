"""RetryPolicy decisions, table-driven, with the jitter and the clock injected."""

from __future__ import annotations

import pytest

from pictofs.api.retry import Outcome, RetryPolicy, parse_retry_after

MIDDLE = 0.5  # random() = 0.5 → jitter factor exactly 1.0


def policy(random_value: float = MIDDLE, **kwargs: object) -> RetryPolicy:
    return RetryPolicy(random=lambda: random_value, sleep=lambda s: None, **kwargs)


STATUS = Outcome.STATUS
NO_RESPONSE = Outcome.NO_RESPONSE
TRUNCATED = Outcome.TRUNCATED

# (method, outcome, status, keyed, attempt, retry_after, expected retry, expected delay)
DECISIONS = [
    # retryable statuses, every method that may retry
    ("GET", STATUS, 503, False, 0, None, True, 1.0),
    ("GET", STATUS, 500, False, 1, None, True, 2.0),
    ("GET", STATUS, 502, False, 2, None, True, 4.0),
    ("GET", STATUS, 504, False, 0, None, True, 1.0),
    ("GET", STATUS, 408, False, 0, None, True, 1.0),
    ("HEAD", STATUS, 503, False, 0, None, True, 1.0),
    ("PUT", STATUS, 503, False, 0, None, True, 1.0),
    ("DELETE", STATUS, 502, False, 0, None, True, 1.0),
    ("POST", STATUS, 503, True, 0, None, True, 1.0),
    ("PATCH", STATUS, 503, True, 0, None, True, 1.0),
    ("post", STATUS, 503, True, 0, None, True, 1.0),
    # POST/PATCH without an idempotency key never retry
    ("POST", STATUS, 503, False, 0, None, False, 0.0),
    ("PATCH", NO_RESPONSE, None, False, 0, None, False, 0.0),
    # statuses that are never retried
    ("GET", STATUS, 400, False, 0, None, False, 0.0),
    ("GET", STATUS, 401, False, 0, None, False, 0.0),
    ("GET", STATUS, 403, False, 0, None, False, 0.0),
    ("GET", STATUS, 404, False, 0, None, False, 0.0),
    ("POST", STATUS, 409, True, 0, None, False, 0.0),
    ("POST", STATUS, 413, True, 0, None, False, 0.0),
    ("POST", STATUS, 415, True, 0, None, False, 0.0),
    ("GET", STATUS, 501, False, 0, None, False, 0.0),
    # the retry budget: 3 extra attempts
    ("GET", STATUS, 503, False, 3, None, False, 0.0),
    ("GET", NO_RESPONSE, None, False, 3, None, False, 0.0),
    # connection failures before any answer
    ("GET", NO_RESPONSE, None, False, 0, None, True, 1.0),
    ("PUT", NO_RESPONSE, None, False, 1, None, True, 2.0),
    ("POST", NO_RESPONSE, None, True, 2, None, True, 4.0),
    # a body cut short: GET/HEAD, and POST/PATCH with a key (the service replays the answer)
    ("GET", TRUNCATED, None, False, 0, None, True, 1.0),
    ("HEAD", TRUNCATED, None, False, 0, None, True, 1.0),
    ("POST", TRUNCATED, None, True, 0, None, True, 1.0),
    ("PATCH", TRUNCATED, None, True, 1, None, True, 2.0),
    ("POST", TRUNCATED, None, False, 0, None, False, 0.0),
    ("POST", TRUNCATED, None, True, 3, None, False, 0.0),
    ("PUT", TRUNCATED, None, False, 0, None, False, 0.0),
    ("DELETE", TRUNCATED, None, False, 0, None, False, 0.0),
    # Retry-After: wait max(Retry-After, backoff); give up above 120 s
    ("GET", STATUS, 429, False, 0, 5.0, True, 5.0),
    ("GET", STATUS, 429, False, 2, 1.0, True, 4.0),
    ("GET", STATUS, 429, False, 0, 120.0, True, 120.0),
    ("GET", STATUS, 429, False, 0, 121.0, False, 0.0),
    ("POST", STATUS, 429, True, 0, 0.0, True, 1.0),
    ("GET", STATUS, 503, False, 0, 7.0, True, 7.0),
    ("GET", STATUS, 429, False, 0, None, True, 1.0),
]


@pytest.mark.parametrize(
    "method, outcome, status, keyed, attempt, retry_after, retry, delay", DECISIONS
)
def test_decide(method: str, outcome: Outcome, status: int | None, keyed: bool, attempt: int,
                retry_after: float | None, retry: bool, delay: float) -> None:
    decision = policy().decide(attempt, method, outcome, has_idempotency_key=keyed,
                               status=status, retry_after=retry_after)
    assert decision.retry is retry, decision.reason
    assert decision.delay == pytest.approx(delay)
    assert decision.reason


@pytest.mark.parametrize(
    "attempt, random_value, expected",
    [
        (0, 0.0, 0.75),
        (0, 1.0, 1.25),
        (0, 0.5, 1.0),
        (1, 0.0, 1.5),
        (3, 0.5, 8.0),
        (4, 0.5, 16.0),
        (5, 0.5, 30.0),  # capped at 30 s before the jitter
        (9, 1.0, 37.5),
        (9, 0.0, 22.5),
    ],
)
def test_backoff_is_capped_and_jittered(attempt: int, random_value: float,
                                        expected: float) -> None:
    assert policy(random_value).backoff(attempt) == pytest.approx(expected)


def test_max_retries_is_configurable() -> None:
    p = policy(max_retries=0)
    assert not p.decide(0, "GET", STATUS, status=503).retry
    p = policy(max_retries=5)
    assert p.decide(4, "GET", STATUS, status=503).retry
    assert not p.decide(5, "GET", STATUS, status=503).retry


def test_wait_uses_the_injected_sleep() -> None:
    slept: list[float] = []
    p = RetryPolicy(random=lambda: MIDDLE, sleep=slept.append)
    decision = p.decide(1, "GET", STATUS, status=502)
    p.wait(decision)
    p.wait(p.decide(0, "GET", STATUS, status=404))  # no retry: no sleep
    assert slept == [2.0]


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("5", 5.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("-4", 0.0),
        ("1.5", 1.5),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # 30 s after "now" below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    result = parse_retry_after(header, now=now)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)
