"""One ``ClientSession`` and one cookie jar for a whole run, and cookies.txt files.

The session is made inside the running loop and handed to the engine; nothing else in
fetcher creates one. The jar takes cookies from IP-address hosts too (aiohttp refuses
them unless ``unsafe=True``) and, as always, sends a cookie only to the hosts it belongs to.
It keeps and deletes cookies as curl and browsers do (see ``_CookieJar``). Each request,
each redirect hop included, goes through the proxy that ``fetcher.proxies`` picks for its
URL, or direct.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from http.cookies import Morsel
from pathlib import Path

import aiohttp
from yarl import URL

from fetcher.config import FetchConfig
from fetcher.errors import StoreError, UsageError
from fetcher.proxies import ProxyRoutes
from fetcher.store.files import temp_name, write_atomic

__all__ = ["check_cookie_jar", "load_cookies", "open_session", "proxy_routes", "save_cookies"]

_MAX_LINE = 16 * 1024  # response line and header field limits (aiohttp's default is 8190)
_MAX_HEADERS = 256
_PROXY_AUTHORIZATION = "Proxy-Authorization"


@contextlib.asynccontextmanager
async def open_session(config: FetchConfig) -> AsyncIterator[aiohttp.ClientSession]:
    """Open the run's one session, with its jar loaded from ``config.cookies``.

    ``--cookies F --cookie-jar F`` keeps a session in F across runs, as with curl: the
    first run, before F exists, starts with an empty jar.
    """
    jar = _CookieJar(unsafe=True, quote_cookie=False)
    if config.cookies is not None and not _first_of_a_session(config.cookies, config.cookie_jar):
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
        skip_auto_headers=("User-Agent",),
        middlewares=_through_proxies(proxy_routes(config)),
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
    """aiohttp's jar, less two differences from curl and browsers (aiohttp 3.14.5).

    - ``Expires=Thu, 01 Jan 1970 00:00:00 GMT``, the usual way to delete a cookie, parses
      to 0, which ``CookieJar._update_cookies`` takes for "no date": the cookie stayed, as
      a session cookie (aio-libs/aiohttp#13692). Here that date is in the past like any
      other, so the cookie is deleted.
    - A value set as ``b="x y"`` is stored unquoted beside its coded (as received) form;
      ``quote_cookie=True`` would quote ``sid=abc==`` as ``sid="abc=="``, and
      ``quote_cookie=False`` sends ``b=x y``. Here every value goes back as the server
      set it: the coded form, quotes and all.

    Both hooks are private methods of aiohttp's jar: an aiohttp that renames them fails
    the tests in tests/test_cookies.py, which set, send and delete cookies on a server.
    """

    @classmethod
    def _parse_date(cls, date_str: str) -> int | None:
        when = super()._parse_date(date_str)
        return -1 if when == 0 else when

    def _build_morsel(self, cookie: Morsel[str]) -> Morsel[str]:
        morsel: Morsel[str] = Morsel()
        state = {"key": cookie.key, "value": cookie.value, "coded_value": cookie.coded_value}
        morsel.__setstate__(state)  # type: ignore[attr-defined]
        return morsel


def _first_of_a_session(cookies: Path, cookie_jar: Path | None) -> bool:
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
