"""Stage 2: send one request under the run's limits, with retries; the answer is an Outcome.

``fetch_one`` reads top-down: take a host slot (per-host concurrency, the host's pause,
the rate limiters), send the request following redirects by hand so every hop is
recorded, stream the body into the store's sink, and decide whether to retry. A URL that
fails is returned as an ``Outcome`` with an error kind; aiohttp's exceptions are
translated in one place, ``classify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import TypeVar

import aiohttp
from aiohttp.typedefs import RawHeaders
from multidict import CIMultiDict
from yarl import URL

from fetcher.codings import ACCEPT_ENCODING, Decoder, decoder
from fetcher.config import FetchConfig
from fetcher.errors import DecodeError, PathConflict, StoreError
from fetcher.models import (
    REDACTED,
    BodySink,
    ErrorKind,
    Failure,
    Hop,
    Outcome,
    OutcomeKind,
    PriorCopy,
    Request,
    Response,
    same_origin,
)

__all__ = [
    "RETRY_STATUSES",
    "Limits",
    "Pacer",
    "RetryPolicy",
    "classify",
    "fetch_file",
    "fetch_one",
    "host_key",
    "make_limiter",
    "parse_retry_after",
    "send_setup",
]

_T = TypeVar("_T")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
RETRY_AFTER_CAP = 300.0


_SECOND: list[object] = [None, ""]  # the last whole second formatted, and its text


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    now = time.time()
    second = int(now)
    if _SECOND[0] != second:  # format the date and time once a second, not once a row
        _SECOND[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_SECOND[1]}.{int((now - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=8)
def _client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


class Pacer:
    """Starts spaced ``interval`` seconds apart, on a grid: no burst, and no drift.

    ``aiolimiter.AsyncLimiter(1, interval)`` (a bucket of one) counts each start from
    the moment its waiter woke up; a wake-up is late by the loop's timer resolution (a
    millisecond: epoll), and that lateness is lost every time (at ``--rate 100``, 91
    starts a second instead of 100). A bigger bucket absorbs it but lets a burst
    through: ``AsyncLimiter(rate, 1)`` starts nearly twice the rate in one second.
    Here each start takes the next slot of a grid, ``interval`` after the last slot
    (or now, after an idle spell): a late wake-up does not move the slots after it.
    """

    __slots__ = ("_next", "_step", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # A hair more than the interval: float rounding never makes a gap a hair short
        # (n + 1 starts in a window of n intervals).
        self._step = interval * (1 + 1e-9)
        self._next = -math.inf

    async def acquire(self) -> None:
        """Wait for this start's slot."""
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self._step  # taken now: waiters keep their order
        if slot > now:
            await asyncio.sleep(slot - now)

    def follow(self, other: Pacer) -> None:
        """Go on from ``other``'s grid: the next start comes ``interval`` after its last."""
        self._next = other._next - other._step + self._step


def make_limiter(rate: float) -> Pacer:
    """A limiter of ``rate`` starts per second, one every ``1 / rate`` seconds."""
    return Pacer(1 / rate)


# --------------------------------------------------------------------------- limits


@dataclass(slots=True)
class _Host:
    slots: asyncio.Semaphore
    limiter: Pacer | None
    resume_at: float = 0.0


@dataclass(slots=True)
class Limits:
    """Per-host concurrency, per-host pauses and the rate limiters of one run.

    The worker pool is the overall concurrency limit; these sit beside it. Pauses are
    kept on ``clock``, by default the running loop's time, which ``asyncio.sleep`` and
    the pacers use too (so a test can run them all on a fake clock).
    """

    per_host: int
    rate: float | None = None
    per_host_rate: float | None = None
    clock: Callable[[], float] | None = None
    _limiter: Pacer | None = None
    _hosts: dict[str, _Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate is not None:
            self._limiter = make_limiter(self.rate)

    @classmethod
    def from_config(cls, config: FetchConfig) -> Limits:
        return cls(per_host=config.host_slots, rate=config.rate, per_host_rate=config.host_rate)

    def _host(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            limiter = make_limiter(self.per_host_rate) if self.per_host_rate else None
            state = self._hosts[host] = _Host(asyncio.Semaphore(self.per_host), limiter)
        return state

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    def pause_host(self, host: str, seconds: float) -> None:
        """Start no request to ``host`` for ``seconds`` (a 429 or 503 said so)."""
        state = self._host(host)
        state.resume_at = max(state.resume_at, self._now() + seconds)

    def set_host_delay(self, host: str, seconds: float) -> None:
        """Space the starts of ``host``'s requests by ``seconds`` (robots.txt Crawl-delay):
        one request per period, with no burst; the starts made already (robots.txt's
        own) count."""
        state = self._host(host)
        pacer = Pacer(seconds)
        if state.limiter is not None:
            pacer.follow(state.limiter)
        state.limiter = pacer

    def slot(self, host: str) -> _Slot:
        """Hold one of ``host``'s slots, after its pause and the rate limiters
        (``async with limits.slot(host):``)."""
        return _Slot(self, self._host(host))

    async def _wait(self, state: _Host) -> None:
        # A pause may begin or grow while we wait for it or for a limiter (another
        # 429), so look again after each wait; a start the pause cut short is lost.
        while True:
            while (wait := state.resume_at - self._now()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            if state.limiter is not None:
                await state.limiter.acquire()
            if self._limiter is not None:
                await self._limiter.acquire()
            if state.resume_at <= self._now():
                return


class _Slot:
    """``Limits.slot``: a plain class, as it is entered once per request."""

    __slots__ = ("_limits", "_state")

    def __init__(self, limits: Limits, state: _Host) -> None:
        self._limits, self._state = limits, state

    async def __aenter__(self) -> None:
        await self._state.slots.acquire()
        try:
            await self._limits._wait(self._state)
        except BaseException:
            self._state.slots.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._state.slots.release()


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to wait before trying again."""

    retries: int = 3
    base: float = 0.5
    cap: float = 30.0
    rng: random.Random | None = field(default=None, compare=False)  # None: the module's

    def backoff(self, attempt: int) -> float:
        """Full jitter: a random wait in [0, min(cap, base * 2**(attempt-1))]."""
        return (self.rng or random).uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date), capped at
    five minutes; None when absent or nonsense."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - current), RETRY_AFTER_CAP)


# --------------------------------------------------------------------------- errors


class _Attempt(Exception):
    """One attempt failed: how, whether to retry, and what the server said."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retry: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.message, self.retry = kind, message, retry
        self.status, self.retry_after = status, retry_after
        self.host: str | None = None  # the host that answered (a redirect may change it)


def classify(exc: BaseException) -> tuple[ErrorKind, str, bool]:
    """Translate an exception of one attempt into ``(kind, message, retryable)``."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return ErrorKind.TLS, _one_line(exc), False
    if isinstance(exc, ssl.SSLError):
        return ErrorKind.TLS, _one_line(exc), False
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return ErrorKind.TIMEOUT, "timed out", True
    if isinstance(exc, aiohttp.InvalidURL):
        return ErrorKind.INVALID, f"invalid URL: {exc}", False
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ErrorKind.CONNECTION, f"body incomplete: {_one_line(exc)}", True
    if isinstance(exc, aiohttp.ClientResponseError):
        # A response aiohttp could not parse: garbage, a bad status line, huge headers.
        return ErrorKind.CONNECTION, f"invalid HTTP response: {_one_line(exc)}", True
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ErrorKind.CONNECTION, _one_line(exc) or type(exc).__name__, True
    raise exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


# --------------------------------------------------------------------------- fetching


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fetched:
    response: Response
    path: str | None = None
    meta: str | None = None
    size: int | None = None
    sha256: str | None = None
    not_modified: bool = False


async def fetch_one(
    session: aiohttp.ClientSession,
    request: Request,
    *,
    limits: Limits,
    config: FetchConfig,
    sink: Callable[[], BodySink],
    prior: PriorCopy | None = None,
    policy: RetryPolicy | None = None,
) -> Outcome:
    """Fetch one request with retries; never raise for a failed URL."""
    policy = policy or RetryPolicy(retries=config.retries)
    started = time.monotonic()
    fetched_at = now_iso()
    attempt = 0
    while True:
        attempt += 1
        try:
            fetched = await _attempt(session, request, limits, config, sink, prior, attempt)
        except _Attempt as failure:
            delay = failure.retry_after
            if delay is None:
                delay = policy.backoff(attempt)
            if failure.retry_after is not None or failure.status == 429:
                # The server asked the whole host to slow down, not only this URL; the
                # next requests to it wait too, even when this row retries no more.
                limits.pause_host(failure.host or host_key(request.url), delay)
            if not failure.retry or attempt > policy.retries:
                return Outcome(
                    request=request,
                    kind=OutcomeKind.FAILED,
                    status=failure.status,
                    attempts=attempt,
                    elapsed_ms=_ms(started),
                    fetched_at=fetched_at,
                    error=Failure(kind=failure.kind, message=failure.message),
                )
            await asyncio.sleep(delay)
            continue
        response = fetched.response
        return Outcome(
            request=request,
            kind=OutcomeKind.NOT_MODIFIED if fetched.not_modified else OutcomeKind.FETCHED,
            status=response.status,
            reason=response.reason,
            final_url=response.final_url,
            redirects=response.redirects,
            path=fetched.path,
            meta=fetched.meta,
            size=fetched.size,
            sha256=fetched.sha256,
            attempts=attempt,
            elapsed_ms=_ms(started),
            fetched_at=fetched_at,
            content_type=next(
                (v for k, v in response.headers if k.lower() == "content-type"), None
            ),
        )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def host_key(url: str | URL) -> str:
    """The key of a URL's host in ``Limits``: host and port."""
    parsed = url if isinstance(url, URL) else URL(url)
    return f"{parsed.host}:{parsed.port}"


def _conditional(
    request: Request, prior: PriorCopy | None, config: FetchConfig
) -> list[tuple[str, str]]:
    """The validators of the copy a GET refreshes; none for another method, whose answer
    is no good copy (a server that follows RFC 9110 answers a POST's ``If-None-Match``
    with 412)."""
    if prior is None or config.force or request.method != "GET":
        return []
    headers = []
    if prior.etag and (etag := _as_sent(prior.etag)):
        headers.append(("If-None-Match", etag))
    if prior.last_modified and (last_modified := _as_sent(prior.last_modified)):
        headers.append(("If-Modified-Since", last_modified))
    return headers


def _as_sent(stored: str) -> str | None:
    """A stored header value (its bytes, one character each) as aiohttp must be given it
    to send those bytes: it writes header values as UTF-8, so it cannot send bytes that
    are not UTF-8 (None: better no validator than one the server never gave)."""
    if stored.isascii():
        return stored
    try:
        return stored.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


async def _attempt(
    session: aiohttp.ClientSession,
    request: Request,
    limits: Limits,
    config: FetchConfig,
    sink: Callable[[], BodySink],
    prior: PriorCopy | None,
    attempt: int,
) -> _Fetched:
    """One attempt: the final response of the redirect chain, its body streamed."""
    started = time.monotonic()
    started_at = now_iso()
    chain = _Chain()
    conditional = _conditional(request, prior, config)
    kept = prior if conditional else None  # a 304 keeps a copy only when it was asked
    async with _final_response(
        session, request, limits, config, chain, conditional, raw=True
    ) as resp:
        ttfb = _ms(started)
        return await _finish(
            resp, request, config, sink, kept, chain, attempt, started, started_at, ttfb
        )


@dataclass(slots=True)
class _Chain:
    """The redirects of one attempt, and its final URL as it may be shown."""

    hops: list[Hop] = field(default_factory=list)
    final_url: str = ""


@contextlib.asynccontextmanager
async def _final_response(
    session: aiohttp.ClientSession,
    request: Request,
    limits: Limits,
    config: FetchConfig,
    chain: _Chain,
    conditional: Sequence[tuple[str, str]] = (),
    *,
    raw: bool = False,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send ``request`` and follow its redirects by hand, each hop in its host's slot,
    recording each in ``chain``; yield the final response.

    ``raw``: the final body comes as the server sent it, its content codings on (the
    caller decodes it with ``codings.decoder``); the request offers the codings that
    ``codings`` decodes. Otherwise aiohttp decodes the one coding it knows.

    ``--timeout`` bounds the whole chain, the final body included: each hop gets what the
    hops before it left. Secret headers and validators do not follow a redirect to
    another origin. Failures, the caller's included, are raised as ``_Attempt``; their
    messages quote a hop's URL as it may be shown.
    """
    method, url, resend = request.method, URL(request.url, encoded=False), True
    shown = _shown_url(request)  # None while the URL holds nothing a template hid
    headers = CIMultiDict(request.headers)
    headers.extend(conditional)
    if raw:
        headers.setdefault("Accept-Encoding", ACCEPT_ENCODING)
    first = url
    seen: set[str] = set()  # the URLs of the chain, filled at the first redirect
    left = config.timeout
    while True:
        async with limits.slot(host_key(url)):
            sent = time.monotonic()
            try:
                if left <= 0:  # the hops before took the whole --timeout
                    raise TimeoutError
                async with session.request(
                    method,
                    url,
                    headers=headers,
                    data=_payload(request) if resend else None,
                    allow_redirects=False,
                    timeout=_client_timeout(left),
                    auto_decompress=not raw,
                ) as resp:
                    location = None
                    if resp.status in REDIRECT_STATUSES:
                        location = resp.headers.get("Location")
                    if not location:
                        chain.final_url = str(resp.url if shown is None else _bare(shown))
                        yield resp
                        return
                    seen = seen or {str(first)}
                    target = _redirect_target(url, location, chain.hops, seen, resp.status)
                    shown_target = _shown_target(url, shown, target)
                    chain.hops.append(_hop(url, shown, resp.status, location, shown_target))
                    if _becomes_get(resp.status, method):
                        method, resend = "GET", False  # the body (or form) stays behind
                    url, shown = target, shown_target
            except _Attempt as failure:
                failure.host = host_key(url)
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
                kind, message, retry = classify(exc)
                if shown is not None:  # aiohttp's messages may quote the URL
                    message = _shown_in(message, url, shown)
                raise _Attempt(kind, message, retry=retry) from exc
            left -= time.monotonic() - sent
        if not same_origin(url, first):
            for name in request.secret_header_names():
                headers.popall(name, None)
            headers.popall("If-None-Match", None)
            headers.popall("If-Modified-Since", None)


def _becomes_get(status: int, method: str) -> bool:
    """Whether a redirect turns the request into a GET: a 303 does (a HEAD stays a HEAD,
    as RFC 9110 allows and curl does), a 301 or 302 only a POST (as browsers and curl)."""
    if status == 303:
        return method != "HEAD"
    return status in (301, 302) and method == "POST"


def _shown_url(request: Request) -> URL | None:
    """The request's URL as it may be shown, beside the one sent; None when it is the same.

    A template may have put a secret anywhere in the URL; where it put it in the port,
    no URL can hold ``<redacted>`` and only the scheme is shown.
    """
    if request.redacted_url is None:
        return None
    try:
        return URL(request.redacted_url, encoded=True)
    except ValueError:
        return URL(f"{URL(request.url).scheme}://{REDACTED}", encoded=True)


def _shown_target(url: URL, shown: URL | None, target: URL) -> URL | None:
    """A redirect's target as it may be shown, ``url`` being shown as ``shown``; None
    when nothing of it is hidden.

    A part of the target that is the very part of ``url`` where a secret is hidden (a
    relative Location keeps the host and userinfo; an http-to-https or a trailing-slash
    redirect keeps the query) stays hidden; the rest is the server's own.
    """
    if shown is None:
        return None
    built = URL.build(
        scheme=target.scheme,
        user=_kept(url.raw_user, shown.raw_user, target.raw_user),
        password=_kept(url.raw_password, shown.raw_password, target.raw_password),
        host=_kept(url.raw_host, shown.raw_host, target.raw_host) or "",
        port=_kept(url.explicit_port, shown.explicit_port, target.explicit_port),
        path=_kept(url.raw_path, shown.raw_path, target.raw_path),
        query_string=_kept(url.raw_query_string, shown.raw_query_string, target.raw_query_string),
        fragment=target.raw_fragment,
        encoded=True,
    )
    return None if str(built) == str(target) else built


def _kept(sent: _T, shown: _T, target: _T) -> _T:
    """A part of a redirect's target: shown hidden when it is the part sent hidden."""
    return shown if target == sent and sent != shown else target


def _hop(url: URL, shown: URL | None, status: int, location: str, target: URL | None) -> Hop:
    """A redirect as it may be shown: the Location as sent, unless it keeps a hidden part."""
    if target is not None:
        location = str(target if URL(location).absolute else target.relative())
    return Hop(url=str(url if shown is None else shown), status=status, location=location)


def _bare(url: URL) -> URL:
    """``url`` without its userinfo, as aiohttp sends it and reports it."""
    return url.with_user(None)


def _shown_in(message: str, url: URL, shown: URL) -> str:
    """``message`` with ``url`` quoted as ``shown``: as it was asked for, without its
    userinfo (as aiohttp sends it), without its fragment (as aiohttp's ``req.url``), and
    its host alone only when a template hid a secret in the host."""
    pairs = [(url, shown), (_bare(url), _bare(shown))]
    pairs += [(sent.with_fragment(None), seen.with_fragment(None)) for sent, seen in pairs]
    for sent, seen in pairs:
        message = message.replace(str(sent), str(seen))
    for host, shown_host in ((url.raw_host, shown.raw_host), (url.host, shown.host)):
        if host and host != shown_host:
            message = message.replace(host, shown_host or REDACTED)
    return message


def _payload(request: Request) -> object:
    """What the request sends: its body, or its form (made anew: a hop may resend it)."""
    if request.form is not None and request.body is None and request.method != "GET":
        return aiohttp.FormData(dict(request.form))
    return request.body.encode("utf-8") if request.body is not None else None


def _redirect_target(url: URL, location: str, hops: list[Hop], seen: set[str], status: int) -> URL:
    try:
        target = url.join(URL(location))
    except (ValueError, TypeError) as exc:
        raise _Attempt(ErrorKind.REDIRECT, f"bad redirect Location: {exc}", retry=False) from exc
    if target.scheme not in ("http", "https"):
        raise _Attempt(
            ErrorKind.REDIRECT,
            f"refused a redirect to a {target.scheme or 'relative'}: URL",
            retry=False,
            status=status,
        )
    if len(hops) >= MAX_REDIRECTS:
        raise _Attempt(
            ErrorKind.REDIRECT, f"more than {MAX_REDIRECTS} redirects", retry=False, status=status
        )
    key = str(target.with_fragment(None))
    if key in seen:
        raise _Attempt(ErrorKind.REDIRECT, "redirect loop", retry=False, status=status)
    seen.add(key)
    return target


async def _finish(
    resp: aiohttp.ClientResponse,
    request: Request,
    config: FetchConfig,
    sink: Callable[[], BodySink],
    prior: PriorCopy | None,
    chain: _Chain,
    attempt: int,
    started: float,
    started_at: str,
    ttfb: int,
) -> _Fetched:
    """The final response: a failure, a 304, or a body streamed into the store."""
    status = resp.status
    if status == 304 and prior is not None:
        return _Fetched(
            response=_response(resp, request, chain, attempt, started_at, ttfb),
            path=prior.path,
            size=prior.size,
            sha256=prior.sha256,
            not_modified=True,
        )
    if status in REDIRECT_STATUSES:
        raise _Attempt(
            ErrorKind.REDIRECT, f"HTTP {status} without a Location", retry=False, status=status
        )
    if not 200 <= status < 300:
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise _Attempt(
            ErrorKind.HTTP,
            f"HTTP {status} {resp.reason or ''}".strip(),
            retry=status in RETRY_STATUSES,
            status=status,
            retry_after=retry_after,
        )
    if request.method == "HEAD":  # no body: only its sidecar is stored, no copy replaced
        final = _response(resp, request, chain, attempt, started_at, ttfb, _ms(started))
        return _Fetched(response=final, meta=await _commit_headers(sink(), final))
    # The length the body must have: none for a 204 (the header describes a body not
    # sent), none for an encoded body (it counts encoded bytes, we read decoded).
    expected = resp.content_length
    if status == 204 or resp.headers.get("Content-Encoding"):
        expected = None
    if config.max_size is not None and (expected or 0) > config.max_size:
        raise _Attempt(ErrorKind.TOO_LARGE, _too_large(config.max_size), retry=False, status=status)
    chunks = _body(resp)
    body = sink()
    try:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if config.max_size is not None and size > config.max_size:
                raise _Attempt(
                    ErrorKind.TOO_LARGE, _too_large(config.max_size), retry=False, status=status
                )
            try:
                await body.write(chunk)
            except OSError as exc:
                raise StoreError(f"cannot write a body: {exc}") from exc
        if expected is not None and size != expected:
            raise _Attempt(
                ErrorKind.CONNECTION,
                f"body incomplete: got {size} of {expected} bytes",
                retry=True,
                status=status,
            )
        final = _response(resp, request, chain, attempt, started_at, ttfb, _ms(started))
        try:
            stored = await body.commit(final)
        except OSError as exc:
            raise StoreError(f"cannot store a body: {exc}") from exc
    except PathConflict as exc:
        body.discard()
        raise _Attempt(ErrorKind.INVALID, str(exc), retry=False, status=status) from exc
    except DecodeError as exc:  # the same bytes would come again: no retry
        body.discard()
        raise _Attempt(ErrorKind.DECODE, str(exc), retry=False, status=status) from exc
    except BaseException:
        body.discard()
        raise
    if stored.size != size:
        raise RuntimeError(f"the store wrote {stored.size} bytes, the engine read {size}")
    return _Fetched(
        response=final, path=stored.path, meta=stored.meta, size=size, sha256=stored.sha256
    )


async def _commit_headers(sink: BodySink, response: Response) -> str:
    """Store the sidecar of a response that has no body; return its path."""
    try:
        return await sink.commit_headers(response)
    except OSError as exc:
        sink.discard()
        raise StoreError(f"cannot store a sidecar: {exc}") from exc
    except BaseException:
        sink.discard()
        raise


def _body(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The final response's body as stored: its content codings undone, when it has one."""
    if resp.method == "HEAD" or resp.status == 204:  # no body, whatever the headers say
        return _chunks(resp.content)
    try:
        layers = decoder(resp.headers.getall("Content-Encoding", ()))
    except DecodeError as exc:
        raise _Attempt(ErrorKind.DECODE, str(exc), retry=False, status=resp.status) from exc
    chunks = _chunks(resp.content)
    return chunks if layers is None else _decoded(chunks, layers)


async def _chunks(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's chunks as the parser buffered them: ``iter_any()`` would join them."""
    while True:
        chunk, _ = await content.readchunk()
        if chunk:
            yield chunk
        elif content.at_eof():  # not at a chunked body's empty chunk end
            return


async def _decoded(chunks: AsyncIterator[bytes], layers: Decoder) -> AsyncIterator[bytes]:
    """The body's chunks with its content codings undone; raises ``DecodeError``."""
    async for chunk in chunks:
        for piece in layers.feed(chunk):
            yield piece
    layers.finish()


def _response(
    resp: aiohttp.ClientResponse,
    request: Request,
    chain: _Chain,
    attempt: int,
    started_at: str,
    ttfb: int,
    elapsed: int = 0,
) -> Response:
    return Response(
        status=resp.status,
        reason=resp.reason or "",
        final_url=chain.final_url,
        redirects=tuple(chain.hops),
        headers=_headers(resp.raw_headers),
        attempts=attempt,
        started_at=started_at,
        ttfb_ms=ttfb,
        elapsed_ms=elapsed,
    )


def _headers(raw: RawHeaders) -> tuple[tuple[str, str], ...]:
    """The response's headers, all, in order, as the server sent them.

    Each byte is one character (latin-1, what HTTP/1.1 carries): the only decoding that
    gives every value's bytes back (``value.encode("latin-1")``). Decoding UTF-8 where it
    is valid would not: ``é`` could then be the bytes C3 A9 or E9.
    """
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


def _too_large(limit: int) -> str:
    return f"body larger than --max-size ({limit} bytes)"


# --------------------------------------------------------------------------- setup


async def send_setup(
    session: aiohttp.ClientSession, request: Request, *, limits: Limits, config: FetchConfig
) -> tuple[int, str]:
    """Send one ``[[setup]]`` request, redirects followed as a row's are (secrets stay
    with the origin); return ``(status, reason)``, or ``(0, why)`` when none came."""
    try:
        async with _final_response(session, request, limits, config, _Chain(), raw=True) as resp:
            await resp.read()  # a login page, read as sent: only its cookies matter
            return resp.status, resp.reason or ""
    except _Attempt as failure:
        return 0, f"{failure.kind}: {failure.message}"


# --------------------------------------------------------------------------- files


async def fetch_file(
    session: aiohttp.ClientSession,
    request: Request,
    *,
    limits: Limits,
    config: FetchConfig,
    max_bytes: int,
) -> tuple[int, bytes]:
    """Fetch a file the run needs that is not a page (robots.txt, a sitemap) as a row's
    request is sent: in its host's slots and pacers, redirects followed (secrets stay
    with the origin), ``--timeout`` for the whole; no retry, nothing stored.

    Returns ``(status, at most max_bytes of the body)``, or ``(0, b"")`` when no
    response came.
    """
    try:
        async with _final_response(session, request, limits, config, _Chain()) as resp:
            return resp.status, await _head(resp.content, max_bytes)
    except _Attempt:
        return 0, b""


async def _head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The first ``limit`` bytes of a body (``read(limit)`` gives what is buffered)."""
    data = bytearray()
    while len(data) < limit and (chunk := await content.read(limit - len(data))):
        data += chunk
    return bytes(data)
