"""The one request path: send a request hop by hop, in each hop's host slot.

Rows (``fetch.fetch_one``), ``[[setup]]`` requests (``send_setup``), robots.txt and
sitemaps (``fetch_file``) all go through ``Exchange``: redirects followed by hand
so every hop is recorded (as it may be shown: a secret a template put in the URL stays
hidden), the run's limits and pacers taken for each hop, ``--timeout`` over the whole
chain, and secret headers and validators kept from other origins.
"""

from __future__ import annotations

import functools
import math
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from fetcher.codings import ACCEPT_ENCODING
from fetcher.config import FetchConfig
from fetcher.limits import Limits, Slot, host_key
from fetcher.models import REDACTED, ErrorKind, Hop, Request, same_origin
from fetcher.retry import AttemptFailed, classify

if TYPE_CHECKING:
    from fetcher.warc import Capture, WarcWriter

__all__ = [
    "MAX_REDIRECTS",
    "REDIRECT_STATUSES",
    "Chain",
    "Exchange",
    "fetch_file",
    "send_setup",
]

_T = TypeVar("_T")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10


# A memo of a pure function, not state a run could see (a ClientTimeout is frozen): a
# request's timeout is made once per value, not once a request.
@functools.lru_cache(maxsize=8)
def _client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


@dataclass(slots=True)
class Chain:
    """The redirects of one attempt, and its final URL as it may be shown."""

    hops: list[Hop] = field(default_factory=list)
    final_url: str = ""
    deadline: float = math.inf  # the time.monotonic() the attempt's --timeout ends at
    capture: Capture | None = None  # --warc: the response's records, its body teed in


class Exchange:
    """``async with Exchange(session, request, limits, config, chain) as resp``: send
    ``request`` and follow its redirects by hand, each hop in its host's slot, recording
    each in ``chain``; ``resp`` is the final response, its host's slot held until the
    block ends (the body is read in it).

    ``raw``: the final body comes as the server sent it, its content codings on (the
    caller decodes it with ``codings.decoder``); the request offers the codings that
    ``codings`` decodes. Otherwise aiohttp decodes the one coding it knows.

    ``--timeout`` bounds the whole chain, the final body included: each hop gets what the
    hops before it left. Secret headers and validators do not follow a redirect to
    another origin. Every failure of the exchange, the reading of the body in the block
    included, leaves it as ``AttemptFailed`` (``_failure``), its message quoting a hop's
    URL as it may be shown.
    """

    __slots__ = (
        "_chain", "_first", "_headers", "_left", "_limits", "_method", "_raw", "_request",
        "_resend", "_resp", "_seen", "_session", "_shown", "_slot", "_url", "_warc",
    )  # fmt: skip

    def __init__(
        self,
        session: aiohttp.ClientSession,
        request: Request,
        limits: Limits,
        config: FetchConfig,
        chain: Chain,
        conditional: Sequence[tuple[str, str]] = (),
        *,
        raw: bool = False,
        warc: WarcWriter | None = None,
    ) -> None:
        self._session, self._request, self._limits = session, request, limits
        self._warc = warc
        self._chain, self._raw = chain, raw
        self._method, self._url, self._resend = (
            request.method,
            URL(request.url, encoded=False),
            True,
        )
        self._shown = _shown_url(request)  # None while the URL holds nothing a template hid
        self._headers = headers = CIMultiDict(request.headers)
        headers.extend(conditional)
        if raw:
            headers.setdefault("Accept-Encoding", ACCEPT_ENCODING)
        self._first = self._url
        self._seen: set[str] = set()  # the URLs of the chain, filled at the first redirect
        self._left = config.timeout
        self._resp: aiohttp.ClientResponse | None = None
        self._slot: Slot | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        """The final response: each hop sent in its host's slot, redirects followed."""
        try:
            while True:
                slot = self._limits.slot(host_key(self._url))
                await slot.__aenter__()
                self._slot = slot  # held: left by _release
                sent = time.monotonic()
                if self._left <= 0:  # the hops before took the whole --timeout
                    raise TimeoutError
                self._chain.deadline = sent + self._left
                self._resp = resp = await self._session.request(
                    self._method,
                    self._url,
                    headers=self._headers,
                    data=_payload(self._request) if self._resend else None,
                    allow_redirects=False,
                    timeout=_client_timeout(self._left),
                    auto_decompress=not self._raw,
                )
                await resp.__aenter__()
                if self._warc is not None:
                    shown = self._shown or self._url
                    self._chain.capture = self._warc.capture(
                        resp, self._request, shown, resend=self._resend
                    )
                if not self._redirected(resp):
                    return resp
                await self._release(None, None, None)
                self._left -= time.monotonic() - sent
                if not same_origin(self._url, self._first):
                    for name in self._request.secret_header_names():
                        self._headers.popall(name, None)
                    self._headers.popall("If-None-Match", None)
                    self._headers.popall("If-Modified-Since", None)
        except BaseException as exc:
            await self._release(type(exc), exc, exc.__traceback__)
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from exc

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._release(kind, exc, tb)
        if exc is not None and (failure := self._failure(exc)) is not exc:
            raise failure from exc

    def _redirected(self, resp: aiohttp.ClientResponse) -> bool:
        """Record a redirect and aim at its target; False for the final response."""
        location = None
        if resp.status in REDIRECT_STATUSES:
            location = resp.headers.get("Location")
        url, shown, chain = self._url, self._shown, self._chain
        if not location:
            chain.final_url = str(resp.url if shown is None else _bare(shown))
            return False
        self._seen = self._seen or {str(self._first)}
        target = _redirect_target(url, location, chain.hops, self._seen, resp.status)
        shown_target = _shown_target(url, shown, target)
        chain.hops.append(_hop(url, shown, resp.status, location, shown_target))
        if _becomes_get(resp.status, self._method):
            self._method, self._resend = "GET", False  # the body (or form) stays behind
        self._url, self._shown = target, shown_target
        return True

    async def _release(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the response and leave the host's slot, as ``async with`` would."""
        resp, self._resp = self._resp, None
        slot, self._slot = self._slot, None
        capture, self._chain.capture = self._chain.capture, None
        try:
            try:
                if capture is not None and resp is not None and self._warc is not None:
                    await self._warc.finish(capture, resp, exc)  # reads a body no one read
            finally:
                if resp is not None:
                    await resp.__aexit__(kind, exc, tb)
        finally:
            if slot is not None:
                await slot.__aexit__(kind, exc, tb)

    def _failure(self, exc: BaseException) -> BaseException:
        """``exc`` as the exchange raises it: an ``AttemptFailed`` naming the host that
        answered, aiohttp's and the network's errors translated (``classify``), any
        other error as it is."""
        if isinstance(exc, AttemptFailed):
            exc.host = host_key(self._url)
            return exc
        if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError | ssl.SSLError):
            kind, message, retry = classify(exc)
            if self._shown is not None:  # aiohttp's messages may quote the URL
                message = _shown_in(message, self._url, self._shown)
            return AttemptFailed(kind, message, retry=retry)
        return exc


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
        raise AttemptFailed(
            ErrorKind.REDIRECT, f"bad redirect Location: {exc}", retry=False
        ) from exc
    if target.scheme not in ("http", "https"):
        raise AttemptFailed(
            ErrorKind.REDIRECT,
            f"refused a redirect to a {target.scheme or 'relative'}: URL",
            retry=False,
            status=status,
        )
    if len(hops) >= MAX_REDIRECTS:
        raise AttemptFailed(
            ErrorKind.REDIRECT, f"more than {MAX_REDIRECTS} redirects", retry=False, status=status
        )
    key = str(target.with_fragment(None))
    if key in seen:
        raise AttemptFailed(ErrorKind.REDIRECT, "redirect loop", retry=False, status=status)
    seen.add(key)
    return target


# --------------------------------------------------------------------------- setup


async def send_setup(
    session: aiohttp.ClientSession, request: Request, *, limits: Limits, config: FetchConfig
) -> tuple[int, str]:
    """Send one ``[[setup]]`` request, redirects followed as a row's are (secrets stay
    with the origin); return ``(status, reason)``, or ``(0, why)`` when none came."""
    try:
        async with Exchange(session, request, limits, config, Chain(), raw=True) as resp:
            await resp.read()  # a login page, read as sent: only its cookies matter
            return resp.status, resp.reason or ""
    except AttemptFailed as failure:
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
        async with Exchange(session, request, limits, config, Chain()) as resp:
            return resp.status, await _head(resp.content, max_bytes)
    except AttemptFailed:
        return 0, b""


async def _head(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The first ``limit`` bytes of a body (``read(limit)`` gives what is buffered)."""
    data = bytearray()
    while len(data) < limit and (chunk := await content.read(limit - len(data))):
        data += chunk
    return bytes(data)
