"""Stage 2: fetch one row under the run's limits, with retries; the answer is an Outcome.

``fetch_one`` reads top-down: an attempt sends the request on the one request path
(``request.final_response``: host slots, pacers, redirects hop by hop), streams the final
body into the store's sink, and ``fetch_one`` decides whether to retry. A URL that fails
is returned as an ``Outcome`` with an error kind; aiohttp's exceptions are translated in
one place, ``retry.classify``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.typedefs import RawHeaders

from fetcher.clock import now_iso
from fetcher.codings import Decoder, decoder
from fetcher.config import FetchConfig
from fetcher.errors import DecodeError, PathConflict, StoreError
from fetcher.limits import Limits, host_key
from fetcher.models import (
    BodySink,
    ErrorKind,
    Failure,
    Outcome,
    OutcomeKind,
    PriorCopy,
    Request,
    Response,
)
from fetcher.request import REDIRECT_STATUSES, Chain, final_response
from fetcher.retry import RETRY_STATUSES, AttemptFailed, RetryPolicy, parse_retry_after

__all__ = ["fetch_one"]


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
        except AttemptFailed as failure:
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
    chain = Chain()
    conditional = _conditional(request, prior, config)
    kept = prior if conditional else None  # a 304 keeps a copy only when it was asked
    async with final_response(
        session, request, limits, config, chain, conditional, raw=True
    ) as resp:
        ttfb = _ms(started)
        return await _finish(
            resp, request, config, sink, kept, chain, attempt, started, started_at, ttfb
        )


async def _finish(
    resp: aiohttp.ClientResponse,
    request: Request,
    config: FetchConfig,
    sink: Callable[[], BodySink],
    prior: PriorCopy | None,
    chain: Chain,
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
        raise AttemptFailed(
            ErrorKind.REDIRECT, f"HTTP {status} without a Location", retry=False, status=status
        )
    if not 200 <= status < 300:
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise AttemptFailed(
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
        raise AttemptFailed(
            ErrorKind.TOO_LARGE, _too_large(config.max_size), retry=False, status=status
        )
    chunks = _body(resp)
    body = sink()
    try:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if config.max_size is not None and size > config.max_size:
                raise AttemptFailed(
                    ErrorKind.TOO_LARGE, _too_large(config.max_size), retry=False, status=status
                )
            try:
                await body.write(chunk)
            except OSError as exc:
                raise StoreError(f"cannot write a body: {exc}") from exc
        if expected is not None and size != expected:
            raise AttemptFailed(
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
        raise AttemptFailed(ErrorKind.INVALID, str(exc), retry=False, status=status) from exc
    except DecodeError as exc:  # the same bytes would come again: no retry
        body.discard()
        raise AttemptFailed(ErrorKind.DECODE, str(exc), retry=False, status=status) from exc
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
        raise AttemptFailed(ErrorKind.DECODE, str(exc), retry=False, status=resp.status) from exc
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
    chain: Chain,
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
