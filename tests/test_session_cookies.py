"""The run's session sends, request after request, the cookies aiohttp's own jar sends.

fetch's jar remembers the ``Cookie`` header it built for each origin and class of path
until a cookie is set, changed, deleted or expires. Here long seeded sequences of
requests, some setting cookies (paths, domains, subdomains, Secure, host-only, Max-Age),
some with a ``Cookie`` header of their own, go once through ``open_session`` and once
through a plain ``aiohttp.ClientSession`` with aiohttp's jar, and the server sees the
same ``Cookie`` header on every request of both. Both sessions reach names such as
``a.example.test`` through a forward proxy that is the origin itself, so domain cookies
can be sent to subdomains.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from fetcher.config import FetchConfig
from fetcher.session import open_session

HOSTS = ["example.test", "a.example.test", "b.a.example.test", "other.test", "127.0.0.1"]
PATHS = ["/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/x/y", "/x/y/"]
NAMES = ["sid", "a", "b", "path", "x"]


def _origin(seen: list[tuple[str, str]]) -> web.Application:
    """Answers any absolute-form target as its origin: each ``?set=`` is a Set-Cookie;
    notes (target, Cookie)."""

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.raw_path, request.headers.get("Cookie", "")))
        response = web.Response(text="ok")
        for value in request.query.getall("set", ()):
            response.headers.add("Set-Cookie", value)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def _set_cookie(rng: random.Random) -> str:
    attributes = [f"{rng.choice(NAMES)}={rng.choice(['1', '2', 'abc==', 'v'])}"]
    if rng.random() < 0.8:
        attributes.append(f"Path={rng.choice(PATHS)}")
    if rng.random() < 0.35:
        attributes.append(
            "Domain=" + rng.choice(["example.test", ".example.test", "a.example.test", "test"])
        )
    if rng.random() < 0.15:
        attributes.append("Secure")
    chance = rng.random()
    if chance < 0.12:
        attributes.append("Max-Age=0")
    elif chance < 0.2:
        attributes.append("Max-Age=600")
    return "; ".join(attributes)


def _sequence(seed: int, length: int) -> list[str]:
    """URLs to request in turn: about a third set cookies."""
    rng = random.Random(seed)
    urls = []
    for n in range(length):
        url = f"http://{rng.choice(HOSTS)}{rng.choice(PATHS)}?n={n}"
        if rng.random() < 0.3:
            url += "".join(f"&set={quote(_set_cookie(rng))}" for _ in range(rng.randint(1, 3)))
        urls.append(url)
    return urls


async def _through(session: aiohttp.ClientSession, urls: list[str], **kwargs: Any) -> None:
    """Request ``urls`` in turn; every seventh carries a ``Cookie`` header of its own,
    which aiohttp merges with the jar's."""
    for n, url in enumerate(urls, start=1):
        own = {"Cookie": "own=1; sid=mine"} if n % 7 == 0 else None
        async with session.get(url, headers=own, allow_redirects=False, **kwargs) as resp:
            await resp.read()
            assert resp.status == 200


async def test_the_session_sends_what_aiohttps_jar_sends_through_every_change(
    aiohttp_server: Any,
) -> None:
    seen: list[tuple[str, str]] = []
    server = await aiohttp_server(_origin(seen))
    proxy = f"http://127.0.0.1:{server.port}"
    for seed in range(6):
        urls = _sequence(seed, 150)
        async with open_session(FetchConfig(proxy=proxy)) as session:
            await _through(session, urls)
        ours, seen[:] = seen[:], []
        jar = aiohttp.CookieJar(unsafe=True, quote_cookie=False)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            await _through(session, urls, proxy=proxy)
        theirs, seen[:] = seen[:], []
        assert ours == theirs
        assert sum(1 for _, cookie in ours if cookie.count("=") >= 2) > 10  # not trivially


async def test_a_cookie_stops_going_when_it_expires_though_nothing_else_changed(
    aiohttp_server: Any,
) -> None:
    seen: list[tuple[str, str]] = []
    server = await aiohttp_server(_origin(seen))
    proxy = f"http://127.0.0.1:{server.port}"
    setting = "&".join(
        f"set={quote(value)}"
        for value in ["short=s; Path=/; Max-Age=1", "long=l; Domain=example.test; Path=/"]
    )
    async with open_session(FetchConfig(proxy=proxy)) as session:
        await _through(session, [f"http://a.example.test/set?{setting}"])
        await _through(session, [f"http://a.example.test/p/{n}" for n in range(3)])
        await _through(session, [f"http://example.test/p/{n}" for n in range(2)])
        await asyncio.sleep(1.2)
        await _through(session, [f"http://a.example.test/q/{n}" for n in range(2)])
    assert [cookie for _, cookie in seen] == [
        "",
        *["long=l; short=s"] * 3,
        *["long=l"] * 2,  # host-only: not to the parent domain
        *["long=l"] * 2,
    ]
