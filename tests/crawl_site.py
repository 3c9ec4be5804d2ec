"""A generated web site for crawl tests, and the oracle that says what a crawl must fetch.

Pages ``/p/<i>.html`` (and the same page under ``/q/``) link in every form: relative,
absolute, with a fragment, with tracking and real query parameters, to a second host
(``localhost`` is the same server under another host name), ``rel=nofollow``, a path
robots.txt disallows, a ``<base href>``, non-HTML files, and loops. ``expected`` walks the
same graph breadth-first with ``urljoin`` to give the exact set a crawl must request.
"""

from __future__ import annotations

from collections import deque
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from aiohttp import web

ROBOTS = "User-agent: *\nDisallow: /private/\nCrawl-delay: 0.001\n"


def _page_number(path: str) -> int | None:
    for prefix in ("/p/", "/q/"):
        if path.startswith(prefix) and path.endswith(".html"):
            number = path[len(prefix) : -len(".html")]
            if number.isdigit():
                return int(number)
    return None


def links_of(i: int, n: int, port: int) -> tuple[str | None, list[tuple[str, bool]]]:
    """Page i's ``<base href>`` (or None) and its links as ``(href, nofollow)``."""
    base = "/q/" if i % 10 == 0 else None
    links = [
        (f"{(2 * i + 1) % n}.html", False),  # relative to the page (or its base)
        (f"http://127.0.0.1:{port}/p/{(2 * i + 2) % n}.html", False),  # absolute
        (f"/p/{(i + 7) % n}.html#part", False),  # a fragment
        (f"/p/{i}.html?utm_source=feed", False),  # itself, with a tracking parameter
        (f"/p/{(3 * i) % n}.html?page=2", False),  # a real query: another URL
        (f"http://localhost:{port}/p/{i}.html", False),  # another host
        (f"/nofollow/{i}.html", True),
        (f"/private/{i}.html", False),  # disallowed by robots.txt
    ]
    if i % 25 == 0:
        links.append((f"/files/{i}.pdf", False))
    return base, links


def site(n: int, port_box: list[int]) -> web.Application:
    """The site's app; ``port_box[0]`` must hold the port before the first request."""

    async def page(request: web.Request) -> web.Response:
        i = _page_number(request.path)
        if i is None or i >= n:
            raise web.HTTPNotFound()
        base, links = links_of(i, n, port_box[0])
        head = f'<base href="{base}">' if base else ""
        anchors = "\n".join(
            f'<a href="{href}"{" rel=nofollow" if nofollow else ""}>link</a>'
            for href, nofollow in links
        )
        body = f"<!doctype html><html><head>{head}<title>{i}</title></head><body>{anchors}"
        return web.Response(text=body + "</body></html>", content_type="text/html")

    async def pdf(request: web.Request) -> web.Response:
        # Not HTML: its links must not be followed.
        return web.Response(
            body=b'%PDF-1.4 <a href="/p/999999.html">', content_type="application/pdf"
        )

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text=ROBOTS)

    async def trap(request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="a crawler must never come here")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/files/{name}", pdf)
    app.router.add_get("/private/{name}", trap)
    app.router.add_get("/nofollow/{name}", trap)
    app.router.add_get("/{section}/{name}", page)
    return app


def _normal(url: str) -> str:
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if not k.startswith("utm_")])
    netloc = parts.netloc.lower()
    return urlunsplit((parts.scheme, netloc, parts.path or "/", query, ""))


def expected(seeds: list[str], n: int, port: int, depth: int) -> dict[str, int]:
    """URL -> depth of every page a host-scoped crawl to ``depth`` must request."""
    found: dict[str, int] = {}
    queue: deque[str] = deque()
    for seed in seeds:
        url = _normal(seed)
        if url not in found:
            found[url] = 0
            queue.append(url)
    while queue:
        url = queue.popleft()
        d = found[url]
        parts = urlsplit(url)
        i = _page_number(parts.path)
        if d >= depth or i is None or i >= n:
            continue
        base, links = links_of(i, n, port)
        root = urljoin(url, base) if base else url
        for href, nofollow in links:
            if nofollow:
                continue
            target = _normal(urljoin(root, href))
            target_parts = urlsplit(target)
            if target_parts.netloc != parts.netloc or target_parts.path.startswith("/private/"):
                continue
            if target not in found:
                found[target] = d + 1
                queue.append(target)
    return found
