"""Stage 2: fetch one row under the run's limits, with retries; the answer is an Outcome.

``fetch_one`` reads top-down: an attempt sends the request on the one request path
(``request.Exchange``: host slots, pacers, redirects hop by hop), streams the final
body into the store's sink, and ``fetch_one`` decides whether to retry. A URL that fails
is returned as an ``Outcome`` with an error kind; aiohttp's exceptions are translated in
one place, ``retry.classify``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.typedefs import RawHeaders

from fetcher.clock import now_iso
from fetcher.codings import Decoder, decoder
from fetcher.config import FetchConfig
from fetcher.errors import DecodeError, PathConflict, StoreError
from fetcher.limits import Limits, host_key
from fetcher.models import (
    BodySink,
    Chunk,
    ErrorKind,
    Failure,
    Outcome,
    OutcomeKind,
    PriorCopy,
    Request,
    Response,
    fetched_outcome,
)
from fetcher.request import REDIRECT_STATUSES, Chain, Exchange
from fetcher.retry import RETRY_STATUSES, AttemptFailed, RetryPolicy, parse_retry_after
from fetcher.socket_body import socket_body

if TYPE_CHECKING:
    from fetcher.warc import Capture, WarcWriter

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
    warc: WarcWriter | None = None,
) -> Outcome:
    """Fetch one request with retries; never raise for a failed URL."""
    policy = policy or RetryPolicy(retries=config.retries)
    started = time.monotonic()
    fetched_at = now_iso()
    attempt = 0
    while True:
        attempt += 1
        try:
            fetched = await _attempt(session, request, limits, config, sink, prior, attempt, warc)
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
        return _outcome(request, fetched, attempt, _ms(started), fetched_at)


def _outcome(
    request: Request, fetched: _Fetched, attempts: int, elapsed_ms: int, fetched_at: str
) -> Outcome:
    """The outcome of a row whose final response was fetched (or kept its copy: 304),
    with the row's figures over all its attempts; the store's ``sink._fetched`` builds
    the same outcome with the final attempt's figures for a row cancelled after its copy
    was staged."""
    response = fetched.response
    return fetched_outcome(
        request,
        response,
        attempts=attempts,
        elapsed_ms=elapsed_ms,
        fetched_at=fetched_at,
        path=fetched.path,
        meta=fetched.meta,
        size=fetched.size,
        sha256=fetched.sha256,
        not_modified=fetched.not_modified,
        content_type=next((v for k, v in response.headers if k.lower() == "content-type"), None),
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
    warc: WarcWriter | None = None,
) -> _Fetched:
    """One attempt: the final response of the redirect chain, its body streamed."""
    conditional = _conditional(request, prior, config)
    at = _Try(
        request=request,
        sink=sink,
        prior=prior if conditional else None,  # a 304 keeps a copy only when it was asked
        number=attempt,
        max_size=config.max_size,
        started=time.monotonic(),
        started_at=now_iso(),
    )
    exchange = Exchange(session, request, limits, config, at, conditional, raw=True, warc=warc)
    async with exchange as resp:
        at.ttfb = _ms(at.started)
        settled = _settled(resp, at)
        if settled is not None:
            return settled
        if request.method == "HEAD":  # no body: only its sidecar is stored, no copy replaced
            final = _response(resp, at, _ms(at.started))
            return _Fetched(response=final, meta=await _commit_headers(sink(), final))
        return await _store_body(resp, at)


@dataclass(slots=True, kw_only=True)
class _Try(Chain):
    """One attempt: its redirect chain (filled in by ``Exchange``) and what the
    final response is checked and stored with."""

    request: Request
    sink: Callable[[], BodySink]
    prior: PriorCopy | None  # the copy a 304 keeps
    number: int
    max_size: int | None
    started: float
    started_at: str
    ttfb: int = 0


def _settled(resp: aiohttp.ClientResponse, at: _Try) -> _Fetched | None:
    """A 304 that keeps the copy, or None for a 2xx; raises for any other status."""
    status = resp.status
    if status == 304 and at.prior is not None:
        return _Fetched(
            response=_response(resp, at),
            path=at.prior.path,
            size=at.prior.size,
            sha256=at.prior.sha256,
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
    return None


async def _store_body(resp: aiohttp.ClientResponse, at: _Try) -> _Fetched:
    """Stream a 2xx body into a sink of the store, chunk by chunk, then commit it."""
    status, max_size = resp.status, at.max_size
    # The length the body must have: none for a 204 (the header describes a body not
    # sent), none for an encoded body (it counts encoded bytes, we read decoded).
    expected = resp.content_length
    if status == 204 or resp.headers.get("Content-Encoding"):
        expected = None
    if max_size is not None and (expected or 0) > max_size:
        raise AttemptFailed(ErrorKind.TOO_LARGE, _too_large(max_size), retry=False, status=status)
    chunks = _body(resp, at.capture, at.deadline)
    body = at.sink()
    try:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise AttemptFailed(
                    ErrorKind.TOO_LARGE, _too_large(max_size), retry=False, status=status
                )
            try:
                await body.write(chunk)
            except OSError as exc:
                raise StoreError(f"cannot write a body: {exc}") from exc
        if expected is not None and size != expected:
            message = f"body incomplete: got {size} of {expected} bytes"
            raise AttemptFailed(ErrorKind.CONNECTION, message, retry=True, status=status)
        final = _response(resp, at, _ms(at.started))
        try:
            stored = await body.commit(final)
            if at.capture is not None:
                at.capture.stored_sha256 = stored.sha256  # its WARC payload digest
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


def _body(
    resp: aiohttp.ClientResponse, capture: Capture | None = None, deadline: float = math.inf
) -> AsyncIterator[Chunk]:
    """The final response's body as stored: its content codings undone, when it has one
    (its bytes as they came teed into the WARC ``capture``); a large one read off its
    socket (``socket_body``) when nothing but the store takes it."""
    if resp.method == "HEAD" or resp.status == 204:  # no body, whatever the headers say
        return _chunks(resp.content)
    try:
        layers = decoder(resp.headers.getall("Content-Encoding", ()))
    except DecodeError as exc:
        raise AttemptFailed(ErrorKind.DECODE, str(exc), retry=False, status=resp.status) from exc
    if capture is None and (direct := socket_body(resp, deadline)) is not None:
        return direct
    chunks = _chunks(resp.content)
    if capture is not None:
        chunks = capture.tee(chunks, stored=layers is None)
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


def _response(resp: aiohttp.ClientResponse, at: _Try, elapsed: int = 0) -> Response:
    return Response(
        status=resp.status,
        reason=resp.reason or "",
        final_url=at.final_url,
        redirects=tuple(at.hops),
        headers=_headers(resp.raw_headers),
        attempts=at.number,
        started_at=at.started_at,
        ttfb_ms=at.ttfb,
        elapsed_ms=elapsed,
    )


def _headers(raw: RawHeaders) -> tuple[tuple[str, str], ...]:
    """The response's headers, all, in order, as the server sent them.

    Each byte is one character (latin-1, what HTTP/1.1 carries): the only decoding that
    gives every value's bytes back (``value.encode("latin-1")``). Decoding UTF-8 where it
    is valid would not: ``é`` could then be the bytes C3 A9 or E9.
    """
    return tuple([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw])  # a list: -20%


def _too_large(limit: int) -> str:
    return f"body larger than --max-size ({limit} bytes)"
