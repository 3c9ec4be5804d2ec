"""One ``ClientSession`` and one cookie jar for a whole run, and cookies.txt files.

The session is made inside the running loop and handed to the engine; nothing else in
fetcher creates one. The jar takes cookies from IP-address hosts too (aiohttp refuses
them unless ``unsafe=True``) and, as always, sends a cookie only to the hosts it belongs to.
It keeps and deletes cookies as curl and browsers do, and remembers the ``Cookie`` header
it sends to each origin and class of path until a cookie changes (see ``_CookieJar``).
Each request, each redirect hop included, goes through the proxy that ``fetcher.proxies``
picks for its URL, or direct.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from http.cookies import BaseCookie, Morsel
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import ClearCookiePredicate
from aiohttp.typedefs import LooseCookies, PathLike
from yarl import URL

from fetcher.config import FetchConfig
from fetcher.errors import StoreError, UsageError
from fetcher.proxies import ProxyRoutes
from fetcher.store.files import temp_name, write_atomic

if TYPE_CHECKING:
    from _typeshed import SupportsItems

__all__ = [
    "check_cookie_jar",
    "first_of_a_session",
    "load_cookies",
    "open_session",
    "proxy_routes",
    "save_cookies",
]

_MAX_LINE = 16 * 1024  # response line and header field limits (aiohttp's default is 8190)
_MAX_HEADERS = 256
_PROXY_AUTHORIZATION = "Proxy-Authorization"
_NO_URL = URL()


@contextlib.asynccontextmanager
async def open_session(config: FetchConfig) -> AsyncIterator[aiohttp.ClientSession]:
    """Open the run's one session, with its jar loaded from ``config.cookies``.

    ``--cookies F --cookie-jar F`` keeps a session in F across runs, as with curl: the
    first run, before F exists, starts with an empty jar.
    """
    jar = _CookieJar(unsafe=True, quote_cookie=False)
    if config.cookies is not None and not first_of_a_session(config.cookies, config.cookie_jar):
        load_cookies(jar, config.cookies)
    connector = aiohttp.TCPConnector(
        limit=config.concurrency,
        limit_per_host=0,  # the engine's per-host slots are the one per-host limit
        ssl=not config.insecure,
        ttl_dns_cache=300,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=jar,
        timeout=aiohttp.ClientTimeout(total=config.timeout),
        auto_decompress=True,
        max_line_size=_MAX_LINE,
        max_field_size=_MAX_LINE,
        max_headers=_MAX_HEADERS,
        middlewares=_through_proxies(proxy_routes(config)),
        request_class=_Request,
        # No skip_auto_headers: every request fetch makes carries its User-Agent (the
        # job's, or an empty one), so aiohttp adds none, and skipping would copy each
        # request's headers (building a ClientRequest took 2.3x as long).
    )
    try:
        yield session
    finally:
        await session.close()
    if config.cookie_jar is not None:
        save_cookies(jar, config.cookie_jar)


def proxy_routes(config: FetchConfig) -> ProxyRoutes:
    """The run's proxies: ``config.proxy``, else the environment's (see
    ``fetcher.proxies``). Raise ``UsageError`` for one that cannot be used."""
    try:
        return ProxyRoutes.resolve(config.proxy, config.noproxy, os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _through_proxies(routes: ProxyRoutes) -> Sequence[aiohttp.ClientMiddlewareType]:
    """A session middleware that sends each request through its proxy (none without
    proxies): one place for rows, setup requests, robots.txt and sitemaps, run again for
    every redirect hop. aiohttp's own ``trust_env`` is not used: it reads ``~/.netrc`` and
    sends its passwords to origins, which curl does only with ``-n``; its ``NO_PROXY``
    has no CIDR ranges; and it reads the environment again for every request."""
    if not routes:
        return ()

    async def through_proxy(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        proxy = routes.for_url(request.url)
        if proxy is not None:
            connect_headers: dict[str, str] | None = None
            if proxy.authorization is not None:
                if request.is_ssl():  # on the CONNECT only: the tunnel carries the request
                    connect_headers = {_PROXY_AUTHORIZATION: proxy.authorization}
                else:  # the proxy is this request's first hop; it does not pass it on
                    request.headers[_PROXY_AUTHORIZATION] = proxy.authorization
            request.update_proxy(proxy.url, None, connect_headers)
        return await handler(request)

    return (through_proxy,)


class _CookieJar(aiohttp.CookieJar):
    """aiohttp's jar, less two differences from curl and browsers (aiohttp 3.14.5), and
    with the cookies of a request remembered until the jar changes.

    - ``Expires=Thu, 01 Jan 1970 00:00:00 GMT``, the usual way to delete a cookie, parses
      to 0, which ``CookieJar._update_cookies`` takes for "no date": the cookie stayed, as
      a session cookie (aio-libs/aiohttp#13692). Here that date is in the past like any
      other, so the cookie is deleted.
    - A value set as ``b="x y"`` is stored unquoted beside its coded (as received) form;
      ``quote_cookie=True`` would quote ``sid=abc==`` as ``sid="abc=="``, and
      ``quote_cookie=False`` sends ``b=x y``. Here every value goes back as the server
      set it: the coded form, quotes and all.
    - aiohttp filters the whole jar for every request, and ``ClientRequest`` builds a
      morsel per cookie to write the ``Cookie`` header (aio-libs/aiohttp#9520, left to
      CPython's faster ``Morsel``): with 50 cookies that is most of a small request's
      CPU. Here ``filter_cookies`` remembers what it found, with the header
      (``_Filtered``, which ``_Request`` sends as it is), for each origin and class of
      path (``_Sent``), until a cookie is set, deleted, evicted or expires. What a
      request gets is what aiohttp's filter gives, LRU bookkeeping included.

    The hooks are private methods of aiohttp's jar (``_parse_date``, ``_build_morsel``,
    ``_do_expiration``, ``_touch_cookies``): an aiohttp that renames them fails the tests
    in tests/test_cookies.py, which set, send, change, expire and delete cookies on a
    server, and tests/test_session_cookies.py, which compares every ``Cookie`` header
    sent with what aiohttp's own jar and request send.
    """

    def __init__(self, *, unsafe: bool = False, quote_cookie: bool = True) -> None:
        super().__init__(unsafe=unsafe, quote_cookie=quote_cookie)
        self._sent: dict[_SentKey, _Sent] = {}
        self._stale = True  # _sent is to be started again
        self._paths: frozenset[str] = frozenset()  # the Paths (less a final "/") in the jar
        self._longest = 0  # the longest Path ending in "/" of a cookie in the jar
        self._count = 0  # how many cookies the jar held when _sent was started
        self._touched: Sequence[tuple[str, str, str]] | None = None

    @classmethod
    def _parse_date(cls, date_str: str) -> int | None:
        when = super()._parse_date(date_str)
        return -1 if when == 0 else when

    def _build_morsel(self, cookie: Morsel[str]) -> Morsel[str]:
        morsel: Morsel[str] = Morsel()
        state = {"key": cookie.key, "value": cookie.value, "coded_value": cookie.coded_value}
        morsel.__setstate__(state)  # type: ignore[attr-defined]
        return morsel

    def filter_cookies(self, request_url: URL = _NO_URL) -> BaseCookie[str]:
        if not len(self) or type(request_url) is not URL:
            return super().filter_cookies(request_url)
        self._do_expiration()
        if self._stale or len(self) != self._count or len(self._sent) >= _MAX_SENT:
            self._start_remembering()
        key = self._sent_key(request_url)
        sent = self._sent.get(key)
        if sent is None:
            self._touched = None
            found = super().filter_cookies(request_url)
            sent = self._sent[key] = _Sent(dict(found), _cookie_header(found), self._touched)
        elif sent.touched is not None:
            self._touch_cookies(sent.touched)  # as aiohttp's filter does, for its LRU
        return _Filtered(sent)

    def _touch_cookies(self, cookie_keys: Sequence[tuple[str, str, str]]) -> None:
        self._touched = cookie_keys
        super()._touch_cookies(cookie_keys)

    def _start_remembering(self) -> None:
        self._sent.clear()
        jar = self.cookies
        self._paths = frozenset(path for _, path in jar)
        paths = (m["path"] for cookies in jar.values() for m in cookies.values())
        self._longest = max((len(path) for path in paths if path.endswith("/")), default=0)
        self._count = len(self)
        self._stale = False

    def _sent_key(self, url: URL) -> _SentKey:
        """What aiohttp's filter reads of ``url``: its origin, the prefixes of its path
        that are some cookie's path (less a final ``/``), and the path itself when a
        cookie's Path that ends in ``/`` is as long: ``/a/`` is not sent to ``/a``, a
        Path without a final ``/`` goes to every path it prefixes."""
        path = url.path
        prefixes = tuple(p for p in accumulate(path.split("/"), _FORMAT_PATH) if p in self._paths)
        exact = path if len(path) < self._longest else None
        return (url.scheme, url.raw_host or "", url.port, prefixes, exact)

    def update_cookies(self, cookies: LooseCookies, response_url: URL = _NO_URL) -> None:
        self._stale = True
        super().update_cookies(cookies, response_url)

    def update_cookies_from_headers(self, headers: Sequence[str], response_url: URL) -> None:
        self._stale = True
        super().update_cookies_from_headers(headers, response_url)

    def clear(self, predicate: ClearCookiePredicate | None = None) -> None:
        self._stale = True
        super().clear(predicate)

    def load(self, file_path: PathLike) -> None:
        self._stale = True
        super().load(file_path)


_MAX_SENT = 256  # remembered filters; the jar starts again when it holds this many
_FORMAT_PATH = "{}/{}".format  # how aiohttp's filter joins the prefixes of a path
_SentKey = tuple[str, str, int | None, tuple[str, ...], str | None]


@dataclass(frozen=True, slots=True)
class _Sent:
    """What the jar sends to one origin and class of path: aiohttp's filtered morsels,
    the ``Cookie`` header ``ClientRequest`` writes of them, and the cookies (domain,
    path, name) that aiohttp's filter marked as used."""

    morsels: dict[str, Morsel[str]]
    header: str
    touched: Sequence[tuple[str, str, str]] | None


def _cookie_header(cookies: BaseCookie[str]) -> str:
    """The ``Cookie`` header as ``ClientRequest.update_cookies`` writes it: each morsel's
    ``name=coded value`` (it has no attributes), by name, ``; `` between, stripped."""
    return "; ".join(
        f"{morsel.key}={morsel.coded_value}" for _, morsel in sorted(cookies.items())
    ).strip()


class _Filtered(BaseCookie[str]):
    """The cookies ``filter_cookies`` found for a request, a ``BaseCookie`` as aiohttp's,
    carrying their ``Cookie`` header; ``header`` is None once a cookie is added (aiohttp
    ``load``s a request's own ``cookies=`` into it)."""

    def __init__(self, sent: _Sent) -> None:
        super().__init__()
        dict.update(self, sent.morsels)  # as aiohttp's filter fills its result
        self.header: str | None = sent.header

    def load(self, rawdata: str | SupportsItems[str, str | Morsel[Any]]) -> None:
        self.header = None
        super().load(rawdata)

    def __setitem__(self, key: str, value: str | Morsel[str]) -> None:
        self.header = None
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.header = None
        super().__delitem__(key)


class _Request(aiohttp.ClientRequest):
    """aiohttp's request, which writes the jar's ``Cookie`` header as the jar built it
    (``_Filtered``) instead of building a morsel per cookie again. A request that has its
    own ``Cookie`` header gets aiohttp's merge."""

    def update_cookies(self, cookies: LooseCookies | None) -> None:
        if isinstance(cookies, _Filtered) and cookies.header and hdrs.COOKIE not in self.headers:
            self.headers[hdrs.COOKIE] = cookies.header
        else:
            super().update_cookies(cookies)


def first_of_a_session(cookies: Path, cookie_jar: Path | None) -> bool:
    if cookie_jar is None or cookies.exists():
        return False
    return cookies.absolute() == cookie_jar.absolute()


def load_cookies(jar: aiohttp.CookieJar, path: Path) -> int:
    """Load a Netscape cookies.txt (as curl and wget write it); return the count."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--cookies {path}: cannot read: {exc}") from None
    count = 0
    now = time.time()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        http_only = line.startswith("#HttpOnly_")
        if http_only:
            line = line[len("#HttpOnly_") :]
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 7:
            raise UsageError(f"{path}:{number}: not a cookies.txt line (7 tab-separated fields)")
        domain, subdomains, cookie_path, secure, expires, name, value = fields
        try:
            expiry = int(expires)
        except ValueError:
            raise UsageError(f"{path}:{number}: expiry {expires!r} is not a number") from None
        if expiry and expiry < now:
            continue
        host = domain.lstrip(".")
        morsel: Morsel[str] = Morsel()
        # The value as the file has it, unquoted and unchecked (a cookie may be named
        # ``path`` or ``secure``): aiohttp builds the morsels of Set-Cookie the same way.
        morsel.__setstate__({"key": name, "value": value, "coded_value": value})  # type: ignore[attr-defined]
        morsel["path"] = cookie_path or "/"
        if subdomains.upper() == "TRUE" or domain.startswith("."):
            morsel["domain"] = host
        if secure.upper() == "TRUE":
            morsel["secure"] = True
        if http_only:
            morsel["httponly"] = True
        if expiry:
            morsel["max-age"] = str(max(1, int(expiry - now)))
        jar.update_cookies({name: morsel}, URL.build(scheme="https", host=host, path="/"))
        count += 1
    return count


def check_cookie_jar(path: Path, *, output: Path | None = None) -> None:
    """Refuse a ``--cookie-jar`` that cannot be saved, before anything is sent: a
    directory, or a folder where ``save_cookies`` cannot make its temp file (missing,
    not writable, read-only), unless that folder is the ``output`` directory, which the
    run makes. Raises ``UsageError`` naming the path."""
    if path.is_dir():
        raise UsageError(f"--cookie-jar {path}: is a directory")
    if output is not None and not output.exists() and path.parent.absolute() == output.absolute():
        return
    temp = temp_name(path.parent)
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(temp)
    except OSError as exc:
        raise UsageError(f"--cookie-jar {path}: cannot write there: {exc.strerror}") from None


def save_cookies(jar: aiohttp.CookieJar, path: Path) -> int:
    """Write the jar as a Netscape cookies.txt with mode 0600; return the count.

    Raises ``StoreError`` when it cannot be written (the disk is full).
    """
    host_only: frozenset[tuple[str, str, str]] = frozenset(
        getattr(jar, "host_only_cookies", getattr(jar, "_host_only_cookies", ()))
    )
    expirations: dict[tuple[str, str, str], float] = getattr(jar, "_expirations", {})
    now = time.time()
    lines = ["# Netscape HTTP Cookie File", "# Written by fetcher. Edit at your own risk.", ""]
    for (domain, cookie_path), cookies in jar.cookies.items():
        for name, morsel in cookies.items():
            key = (domain, cookie_path, name)
            expires = expirations.get(key)
            if expires is None or expires > now:  # not one that expired since it was set
                lines.append(_cookie_line(morsel, key in host_only, expires))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    try:
        write_atomic(path, data, durable=False, mode=0o600)
    except OSError as exc:
        raise StoreError(f"cannot save the cookie jar {path}: {exc.strerror or exc}") from exc
    return len(lines) - 3


def _cookie_line(morsel: Morsel[str], host_only: bool, expires: float | None) -> str:
    domain = morsel["domain"] or ""
    prefix = "#HttpOnly_" if morsel["httponly"] else ""
    return "\t".join(
        [
            f"{prefix}{'' if host_only else '.'}{domain}",
            "FALSE" if host_only else "TRUE",
            morsel["path"] or "/",
            "TRUE" if morsel["secure"] else "FALSE",
            str(int(expires)) if expires else "0",
            morsel.key,
            morsel.coded_value,  # as the server set it: b="x y" keeps its quotes, as with curl
        ]
    )
