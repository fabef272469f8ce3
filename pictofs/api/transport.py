"""HTTP for the API client: the only module that imports ``requests``.

``Transport`` owns one pooled ``requests.Session`` and does three kinds of exchange:

- ``request_json``: an API request with ``X-API-Key``, JSON in and out;
- ``stream``: image bytes, handed over in chunks (read timeout 30 s without a byte); a body
  cut short is retried while no byte has reached the caller, later it is ``StreamCutShort``;
- ``download``: a whole body into a file, starting over when it is cut short anywhere;
- ``put_signed``: the signed storage PUT, to the URL exactly as given and WITHOUT the key.

Every non-2xx answer goes through ``errors.error_from_response`` here and nowhere else;
failures with no usable answer become ``NetworkError``. Retries follow ``RetryPolicy``, whose
injected ``sleep`` is the only wait. Absolute URLs fetched with the key (``image_url`` and the
like) are reduced to path and query and re-based on the configured base URL, so the key never
reaches another host. Log lines (DEBUG) name method, path, status, request id and elapsed
time, never the key and never a signed URL's token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import IO, Any, Callable, Iterator, Mapping, TypeVar, Union
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from pictofs import __version__
from pictofs.api.errors import (AnswerCutShort, NetworkError, StreamCutShort,
                                 error_from_response)
from pictofs.api.retry import Decision, Outcome, RetryPolicy, parse_retry_after
from pictofs.api.redaction import Redactor, redact_signed_url
from pictofs.api.wire import ByteStream, announced_length, idempotency_key_for
from pictofs.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
Timeout = Union[float, tuple[float, float]]
Body = Union[bytes, "os.PathLike[str]", IO[bytes]]

API_PREFIX = "/api/v1/developer"
KEY_HEADER = "X-API-Key"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADER = "X-Request-Id"
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)
PUT_TIMEOUT: tuple[float, float] = (5.0, 300.0)
# A stream hands its bytes over in pieces of STREAM_CHUNK: the size of a FUSE read, so the
# first read of an image waits for 128 KiB, not for a bigger chunk. ``download`` writes a
# whole body to a file and takes bigger pieces.
STREAM_CHUNK = 128 * 1024
DOWNLOAD_CHUNK = 1 << 20
# A PUT body read from a file is read and sent in pieces of BODY_BLOCK (urllib3's default,
# 16 KiB, took seven reads and seven sends for an image of 100 KB).
BODY_BLOCK = 256 * 1024

_NO_ANSWER = (requests.ConnectionError, requests.Timeout)
_CUT_SHORT = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.ConnectionError,
    requests.Timeout,
)


class _CutShort(Exception):
    """A 2xx answer whose body is shorter than announced or does not parse."""


class _Session(requests.Session):
    """Drops the API key on a redirect to another host, as requests does for Authorization.

    What requests reads from the environment for every request (the proxy variables and
    ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, ``~/.netrc``) is read once per
    scheme and host here instead: the same settings, without walking the environment and
    looking for ``~/.netrc`` at each of the thousands of requests an upload makes. Requests
    are prepared by ``request_direct`` and ``put_direct``, never by ``Session.request``."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # the environment is read by _environment, once per host
        self._environments: dict[tuple[str, str], tuple[dict[str, str], Any, Any]] = {}
        self._environments_lock = threading.Lock()

    def _environment(self, url: str) -> tuple[dict[str, str], Any, Any]:
        """(proxies, verify, netrc auth) from the environment for ``url``'s scheme and host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        with self._environments_lock:
            found = self._environments.get(key)
        if found is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            found = (requests.utils.get_environ_proxies(url), verify,
                     requests.utils.get_netrc_auth(url))
            with self._environments_lock:
                self._environments[key] = found
        return found

    def request_direct(self, method: str, url: str, headers: Mapping[str, str], *,
                       params: Mapping[str, Any] | None = None, json: Any = None,
                       timeout: Any, allow_redirects: bool) -> requests.Response:
        """What ``Session.request`` sends, prepared here and handed to ``Session.send``: the
        session's headers under ``headers``, its cookies, the netrc entry for the host (as
        requests finds it), the environment's proxies and CA bundle, redirects followed
        through ``rebuild_auth`` and ``rebuild_proxies`` below. ``Session.request`` merges
        per request what is the same for every request of this session (its settings, its
        params and hooks, the environment): in-process, a cold read of a small image (one
        GET) took about 0.2 ms less CPU this way, of some 2.2 ms. Always streamed."""
        proxies, env_verify, netrc_auth = self._environment(url)
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=url, headers={**self.headers, **headers},
                         params=params, json=json, auth=self.auth or netrc_auth,
                         cookies=self.cookies, hooks=self.hooks)
        return self.send(prepared, stream=True, timeout=timeout,
                         verify=env_verify or self.verify, cert=self.cert, proxies=proxies,
                         allow_redirects=allow_redirects)

    def put_direct(self, url: str, data: Any, headers: Mapping[str, str],
                   timeout: Any) -> requests.Response:
        """A PUT of ``data`` to ``url`` handed to the adapter at once: no auth (a signed URL
        carries its own), no cookies, no redirect, the session's headers under ``headers``,
        the environment's proxies and CA bundle as for every request. ``Session.request``
        merges settings none of which apply to a signed PUT, and an upload makes one PUT
        per file: the mount's upload of 1,000 files of 100 KB took 1.05 ms of CPU per file
        this way, 1.17 ms through ``Session.put``. Errors and the answer are requests' own,
        as from ``Session.put``."""
        proxies, env_verify, _auth = self._environment(url)
        prepared = requests.PreparedRequest()
        prepared.prepare(method="PUT", url=url, headers={**self.headers, **headers}, data=data)
        return self.get_adapter(url).send(prepared, stream=True, timeout=timeout,
                                          verify=env_verify or self.verify, cert=self.cert,
                                          proxies=proxies)

    def rebuild_proxies(self, prepared_request: Any, proxies: Any) -> dict[str, str]:
        """A redirect: the new host's proxies from the environment, as requests finds them."""
        proxies = {**self._environment(prepared_request.url)[0], **(proxies or {})}
        return super().rebuild_proxies(prepared_request, proxies)

    def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
        super().rebuild_auth(prepared_request, response)
        if self.should_strip_auth(response.request.url, prepared_request.url):
            prepared_request.headers.pop(KEY_HEADER, None)


class _Adapter(HTTPAdapter):
    """requests' adapter whose connections send file bodies in ``BODY_BLOCK`` pieces."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, blocksize=BODY_BLOCK,
                                 **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return super().proxy_manager_for(proxy, blocksize=BODY_BLOCK, **proxy_kwargs)


class Transport:
    """One service endpoint and key; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
        user_agent: str | None = None,
        put_timeout: Timeout = PUT_TIMEOUT,
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError(f"base URL must start with http:// or https://: {base_url!r}")
        self._base = base_url.rstrip("/")
        self._base_path = urlsplit(self._base).path
        self._key = api_key
        self._redact = Redactor(api_key)
        self.timeout = _timeout_pair(timeout)
        self.put_timeout = _timeout_pair(put_timeout)
        self.retry = retry or RetryPolicy()
        self._session = _Session()
        adapter = _Adapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = user_agent or f"pictofs/{__version__}"

    def __repr__(self) -> str:
        return f"Transport(base_url={self._base!r})"

    @property
    def base_url(self) -> str:
        return self._base

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ URLs

    def url_for(self, path_or_url: str) -> str:
        """An API path (``/images/x``) or an absolute URL → a URL on the configured base."""
        parts = urlsplit(path_or_url)
        if parts.scheme or parts.netloc:
            path = parts.path
            if self._base_path and path.startswith(self._base_path + "/"):
                path = path[len(self._base_path):]
            return self._base + path + (f"?{parts.query}" if parts.query else "")
        path = path_or_url if path_or_url.startswith("/") else "/" + path_or_url
        if path.startswith(API_PREFIX + "/"):
            return self._base + path
        return self._base + API_PREFIX + path

    def _target(self, url: str) -> str:
        """What logs and messages show of an API URL: its path and query."""
        return url[len(self._base):] or "/"

    # ------------------------------------------------------------------ the three exchanges

    def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotency_key: str | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """Send an API request; return the parsed JSON body (None if empty) and the headers.
        POST/PATCH always carry an ``Idempotency-Key``, the same one on every retry."""
        verb = method.upper()
        url = self.url_for(path)
        headers = {KEY_HEADER: self._key, "Accept": "application/json"}
        key = idempotency_key_for(verb, idempotency_key)
        if key:
            headers[IDEMPOTENCY_HEADER] = key

        def send() -> requests.Response:
            return self._session.request_direct(verb, url, headers, params=params, json=json,
                                                timeout=self.timeout,
                                                allow_redirects=verb in ("GET", "HEAD"))

        return self._exchange(verb, self._target(url), send, _read_json, keyed=key is not None)

    @contextlib.contextmanager
    def stream(
        self, method: str, path_or_url: str, *, params: Mapping[str, Any] | None = None,
        chunk_size: int = STREAM_CHUNK,
    ) -> Iterator[ByteStream]:
        """Open a download with the key; yields a ``ByteStream``. The first ``chunk_size``
        bytes are read before the caller gets anything, so a short answer is retried."""
        verb = method.upper()
        url = self.url_for(path_or_url)
        headers = {KEY_HEADER: self._key}
        target = self._target(url)

        def send() -> requests.Response:
            return self._session.request_direct(verb, url, headers, params=params,
                                                timeout=self.timeout, allow_redirects=True)

        def receive(response: requests.Response) -> tuple[requests.Response, list[bytes], Any]:
            return (response, *_prefetch(response, chunk_size))

        response, buffered, rest = self._exchange(verb, target, send, receive, keyed=False)
        try:
            yield ByteStream(response.headers, _follow(response, buffered, rest, target))
        finally:
            response.close()

    def download(self, path_or_url: str, out: IO[bytes]) -> Mapping[str, str]:
        """GET a whole body into ``out``; returns the headers. A body cut short after bytes
        were written starts over (there is no ``Range`` support to resume): ``out`` is cut
        back to where it was and the request sent again, as far as the retry policy allows."""
        start = out.tell()
        attempt = 0
        while True:
            try:
                with self.stream("GET", path_or_url, chunk_size=DOWNLOAD_CHUNK) as body:
                    for chunk in body:
                        out.write(chunk)
                    return body.headers
            except StreamCutShort:
                decision = self.retry.decide(attempt, "GET", Outcome.TRUNCATED)
                if not decision.retry:
                    raise
                out.seek(start)
                out.truncate()
                self._pause("GET", self._target(self.url_for(path_or_url)), attempt, decision)
                attempt += 1

    def put_signed(
        self, upload_url: str, body: Body, content_type: str, content_length: int
    ) -> Mapping[str, str]:
        """PUT the bytes to a signed upload URL, used exactly as given, without the key."""
        target = redact_signed_url(upload_url)
        parts = urlsplit(upload_url)
        redact = self._redact.with_more(parts.path.rsplit("/", 1)[-1], parts.query)
        headers = {"Content-Type": content_type, "Content-Length": str(content_length)}

        def send() -> requests.Response:
            with _opened(body) as data:
                return self._session.put_direct(upload_url, data, headers, self.put_timeout)

        def receive(response: requests.Response) -> Mapping[str, str]:
            _discard_body(response)  # a 2xx means stored, whatever the body says
            return response.headers

        return self._exchange("PUT", target, send, receive, keyed=False, redact=redact)

    # ------------------------------------------------------------------ the retry loop

    def _exchange(
        self,
        method: str,
        target: str,
        send: Callable[[], requests.Response],
        receive: Callable[[requests.Response], T],
        *,
        keyed: bool,
        redact: Redactor | None = None,
    ) -> T:
        redact = redact or self._redact
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                response = send()
            except _NO_ANSWER as exc:
                reason = _describe(exc, redact)
                log.debug("%s %s failed after %.3fs: %s", method, target,
                          time.monotonic() - started, reason)
                decision = self.retry.decide(attempt, method, Outcome.NO_RESPONSE,
                                             has_idempotency_key=keyed)
                if not decision.retry:
                    raise NetworkError(f"{method} {target}: {reason}") from None
            except requests.RequestException as exc:
                raise NetworkError(f"{method} {target}: {_describe(exc, redact)}") from None
            else:
                _log_answer(method, target, response, started)
                if not 200 <= response.status_code < 300:
                    decision = self._on_error_status(method, response, attempt, keyed, redact)
                else:
                    try:
                        return receive(response)
                    except (_CutShort, *_CUT_SHORT) as exc:
                        response.close()
                        decision = self.retry.decide(attempt, method, Outcome.TRUNCATED,
                                                     has_idempotency_key=keyed)
                        if not decision.retry:
                            # the service answered: a cut body is no sign it is unreachable
                            # (the breaker trips on NetworkError, not on AnswerCutShort)
                            cut = NetworkError if isinstance(exc, requests.Timeout) \
                                else AnswerCutShort
                            raise cut(
                                f"{method} {target}: answer cut short: {_describe(exc, redact)}"
                            ) from None
            self._pause(method, target, attempt, decision)
            attempt += 1

    def _on_error_status(
        self, method: str, response: requests.Response, attempt: int, keyed: bool,
        redact: Redactor,
    ) -> Decision:
        """Decide on a non-2xx answer: a retry decision, or raise the mapped error."""
        body = _error_body(response, redact)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        decision = self.retry.decide(attempt, method, Outcome.STATUS, has_idempotency_key=keyed,
                                     status=response.status_code, retry_after=retry_after)
        if not decision.retry:
            raise error_from_response(response.status_code, body, response.headers)
        return decision

    def _pause(self, method: str, target: str, attempt: int, decision: Decision) -> None:
        log.info("retrying %s %s in %.1fs (%s; retry %d of %d)", method, target,
                 decision.delay, decision.reason, attempt + 1, self.retry.max_retries)
        self.retry.wait(decision)


# ---------------------------------------------------------------------- helpers


def _timeout_pair(timeout: Timeout) -> tuple[float, float]:
    """A bare number is the read timeout; connect stays at 5 s."""
    if isinstance(timeout, (int, float)):
        return (DEFAULT_TIMEOUT[0], float(timeout))
    connect, read = timeout
    return (float(connect), float(read))


def _read_json(response: requests.Response) -> tuple[Any, Mapping[str, str]]:
    """The whole body as JSON (None when empty) and the headers; ``_CutShort`` when the body
    is shorter than announced or does not parse."""
    content = response.content  # reading may raise ChunkedEncodingError on a short body
    expected = announced_length(response.headers)
    if expected is not None and len(content) < expected:
        raise _CutShort(f"{len(content)} of {expected} bytes")
    if not content.strip():
        return None, response.headers
    try:
        return json.loads(content), response.headers
    except ValueError:
        raise _CutShort("the JSON body does not parse") from None


def _discard_body(response: requests.Response) -> None:
    """Read and drop an answer's body, so the connection goes back to the pool."""
    try:
        for _ in response.iter_content(64 * 1024):
            pass
    except _CUT_SHORT:
        pass
    finally:
        response.close()


def _error_body(response: requests.Response, redact: Redactor) -> str | None:
    try:
        text = response.content.decode("utf-8", errors="replace")
    except _CUT_SHORT:
        return None
    finally:
        response.close()
    return redact(text)


def _prefetch(response: requests.Response, size: int) -> tuple[list[bytes], Iterator[bytes]]:
    """Read up to ``size`` bytes (and the end, when the body is that short) before handing
    anything over; a body that ends early raises here, where it can still be retried."""
    chunks = response.iter_content(size)
    buffered: list[bytes] = []
    received = 0
    try:
        for chunk in chunks:
            buffered.append(chunk)
            received += len(chunk)
            if received >= size:
                return buffered, chunks
    except BaseException:
        response.close()
        raise
    expected = announced_length(response.headers)
    if expected is not None and received != expected:
        response.close()
        raise _CutShort(f"{received} of {expected} bytes")
    return buffered, iter(())


def _follow(
    response: requests.Response, buffered: list[bytes], rest: Iterator[bytes], target: str
) -> Iterator[bytes]:
    """The caller's chunks: what was prefetched, then the rest, checked against the length."""
    expected = announced_length(response.headers)
    received = 0
    for chunk in buffered:
        received += len(chunk)
        yield chunk
    try:
        for chunk in rest:
            received += len(chunk)
            yield chunk
    except _CUT_SHORT:
        raise StreamCutShort(f"GET {target}: stream cut short after {received} bytes") from None
    if expected is not None and received != expected:
        raise StreamCutShort(f"GET {target}: stream cut short: {received} of {expected} bytes")


@contextlib.contextmanager
def _opened(body: Body) -> Iterator[Any]:
    """The body of one PUT attempt: bytes as they are, a path opened, a file rewound."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        yield body
    elif isinstance(body, (str, os.PathLike)):
        with open(body, "rb") as handle:
            yield handle
    else:
        body.seek(0)
        yield body


def _log_answer(method: str, target: str, response: requests.Response, started: float) -> None:
    log.debug("%s %s -> %d [%s] %.3fs", method, target, response.status_code,
              response.headers.get(REQUEST_ID_HEADER, "-"), time.monotonic() - started)


def _describe(exc: BaseException, redact: Redactor) -> str:
    """A short reason for a transport failure, without URLs' secrets or the key."""
    reason: Any = exc
    inner = exc.args[0] if exc.args else None
    if getattr(inner, "reason", None) is not None:  # urllib3's MaxRetryError
        reason = inner.reason
    text = str(reason) or type(exc).__name__
    if text.startswith("<") and ">: " in text:  # "<urllib3.connection… object at 0x…>: why"
        text = text.split(">: ", 1)[1]
    return redact(text)
