"""The site ``fetch demo`` serves: a shop to crawl, an API behind a login, a slow host.

One ``aiohttp.web`` application answers for three made-up hosts under ``.test`` (a
top-level domain reserved for testing, RFC 2606, that never resolves), told apart by the
``Host`` header. The demo's jobs reach it as an HTTP proxy on 127.0.0.1: the client sends
``GET http://shop.demo.test/ HTTP/1.1`` to the proxy's port and this app answers as if it
were that host. So the URLs, the stored paths and the per-host limits read as they would
against real sites, the URLs do not change with the port the system hands out, and a
second demo into the same directory refreshes the same copies (304s) instead of adding a
new set.

- ``shop.demo.test``: ``/`` links ``CATEGORIES`` category pages, each linking
  ``PRODUCTS_PER_CATEGORY`` product pages (about 6 KB of HTML each); some categories link
  a product that does not exist (404); ``/old-catalog`` redirects (301) to
  ``/catalog.html``; robots.txt disallows ``/cart/``, which ``/`` links.
- ``api.demo.test``: ``POST /login`` (form ``user=demo``, ``password=demo``) sets the
  ``session`` cookie that ``GET /items/<n>.json`` needs (401 without it); some items do
  not exist (404), some always fail (500), some fail once and then answer (500 on the
  first request, so a retry succeeds); ``/files/<n>.bin`` are larger bodies (1 MiB);
  ``/v1/items/<n>.json`` redirects (308) to ``/items/<n>.json``.
- ``slow.demo.test``: every answer waits ``SLOW_DELAY`` seconds first.

Pages and items carry an ``ETag`` and answer a matching ``If-None-Match`` with 304.
What the site does by design is in ``DESIGN`` (the ids and pages); ``fetcher.demo``
checks each run against it. The app's only state (which flaky items were asked for)
lives on the app, so each server starts afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from fetcher.loop import loop_factory

__all__ = ["API", "DESIGN", "SHOP", "SLOW", "SLOW_DELAY", "Design", "demo_app", "main"]

SHOP = "shop.demo.test"
API = "api.demo.test"
SLOW = "slow.demo.test"
SLOW_DELAY = 0.25  # seconds before each answer of the slow host
USER, PASSWORD = "demo", "demo"
_COOKIE = "session"
_FILE_SIZE = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Design:
    """What the demo site holds: the pages, and the failures it serves on purpose."""

    categories: int = 10
    products_per_category: int = 30
    items: int = 200  # api.demo.test/items/1.json ... /items/200.json
    missing_items: tuple[int, ...] = (13, 66, 131)  # 404
    broken_items: tuple[int, ...] = (77, 154)  # 500, every time
    flaky_items: tuple[int, ...] = (5, 42, 99, 180)  # 500 once, then 200
    files: int = 4  # api.demo.test/files/1.bin ... (1 MiB each)
    slow_reports: int = 8  # slow.demo.test/reports/1.json ...
    missing_products_in: tuple[int, ...] = (2, 5, 8)  # these categories link a 404

    @property
    def products(self) -> int:
        return self.categories * self.products_per_category

    def missing_product(self, category: int) -> str:
        """The path of the product that category's page links but the shop lacks."""
        return f"/product/{1000 + category}.html"

    def failures(self) -> dict[str, dict[str, int]]:
        """Each job's failures by design: ``{job: {url: status}}``."""
        api = {f"http://{API}/items/{n}.json": 404 for n in self.missing_items}
        api |= {f"http://{API}/items/{n}.json": 500 for n in self.broken_items}
        shop = {f"http://{SHOP}{self.missing_product(c)}": 404 for c in self.missing_products_in}
        return {"api": api, "shop": shop}

    def shop_pages(self) -> int:
        """The pages a crawl of ``/`` to depth 2 stores: ``/``, the categories, the
        products, the catalogue behind the redirect (not the 404s, not ``/cart/``)."""
        return 1 + self.categories + self.products + 1


DESIGN = Design()


def _etag(text: str) -> str:
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'


def _page(request: web.Request, body: str, *, content_type: str) -> web.Response:
    """A 200 with an ETag, or a 304 when the client holds that version."""
    etag = _etag(body)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(text=body, content_type=content_type, headers={"ETag": etag})


def _html(title: str, links: list[tuple[str, str]], filler: int = 0) -> str:
    items = "".join(f'<li><a href="{href}">{text}</a></li>\n' for href, text in links)
    prose = "<p>A page the demo made up, so the crawl has something to store.</p>\n" * filler
    return (
        f"<!doctype html>\n<html><head><meta charset=utf-8><title>{title}</title></head>\n"
        f"<body><h1>{title}</h1>\n{prose}<ul>\n{items}</ul></body></html>\n"
    )


# --------------------------------------------------------------------------- shop.demo.test


def _shop(design: Design) -> web.Application:
    app = web.Application()

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /cart/\n")

    async def index(request: web.Request) -> web.Response:
        links = [(f"/category/{c}/", f"Category {c}") for c in range(design.categories)]
        links += [("/old-catalog", "The catalogue"), ("/cart/", "Your cart (robots.txt: no)")]
        return _page(request, _html("Demo shop", links), content_type="text/html")

    async def category(request: web.Request) -> web.Response:
        c = int(request.match_info["c"])
        if c >= design.categories:
            raise web.HTTPNotFound()
        first = c * design.products_per_category
        links = [
            (f"/product/{n}.html", f"Product {n}")
            for n in range(first, first + design.products_per_category)
        ]
        if c in design.missing_products_in:
            links.append((design.missing_product(c), "A product that is gone"))
        links.append(("/", "Home"))
        return _page(request, _html(f"Category {c}", links), content_type="text/html")

    async def product(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n >= design.products:
            raise web.HTTPNotFound()
        c = n // design.products_per_category
        links = [(f"/category/{c}/", f"Category {c}"), ("/", "Home")]
        links += [(f"/product/{(n + k) % design.products}.html", "Related") for k in (1, 7)]
        html = _html(f"Product {n}", links, filler=60)
        return _page(request, html, content_type="text/html")

    async def catalog(request: web.Request) -> web.Response:
        links = [(f"/category/{c}/", f"Category {c}") for c in range(design.categories)]
        return _page(request, _html("Catalogue", links), content_type="text/html")

    async def old_catalog(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/catalog.html")

    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/", index)
    app.router.add_get(r"/category/{c:\d+}/", category)
    app.router.add_get(r"/product/{n:\d+}.html", product)
    app.router.add_get("/catalog.html", catalog)
    app.router.add_get("/old-catalog", old_catalog)
    return app


# --------------------------------------------------------------------------- api.demo.test


def _api(design: Design) -> web.Application:
    app = web.Application()
    token = secrets.token_hex(16)
    asked: set[int] = set()  # the flaky items asked for once already

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("user") != USER or form.get("password") != PASSWORD:
            raise web.HTTPForbidden(text="wrong user or password\n")
        response = web.json_response({"user": USER, "logged_in": True})
        response.set_cookie(_COOKIE, token, path="/", httponly=True)
        return response

    async def item(request: web.Request) -> web.Response:
        if request.cookies.get(_COOKIE) != token:
            raise web.HTTPUnauthorized(text="log in first: POST /login\n")
        n = int(request.match_info["n"])
        if not 1 <= n <= design.items or n in design.missing_items:
            raise web.HTTPNotFound(text=f"no item {n}\n")
        if n in design.broken_items:
            raise web.HTTPInternalServerError(text=f"item {n} is broken\n")
        if n in design.flaky_items and n not in asked:
            asked.add(n)
            raise web.HTTPInternalServerError(text=f"item {n}: try again\n")
        tags = [f"tag-{n * k % 97}" for k in range(1, 60)]
        body = json.dumps({"id": n, "name": f"Item {n}", "tags": tags}) + "\n"
        return _page(request, body, content_type="application/json")

    async def old_item(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(f"/items/{request.match_info['n']}.json")

    async def file(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if not 1 <= n <= design.files:
            raise web.HTTPNotFound()
        return await _file(request, n)

    app.router.add_post("/login", login)
    app.router.add_get(r"/items/{n:\d+}.json", item)
    app.router.add_get(r"/v1/items/{n:\d+}.json", old_item)
    app.router.add_get(r"/files/{n:\d+}.bin", file)
    return app


async def _file(request: web.Request, n: int) -> web.StreamResponse:
    """File ``n``: 1 MiB of bytes made from ``n``, streamed (or a 304 for its ETag)."""
    etag = _etag(f"file {n}")
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    block = hashlib.sha256(f"{n}".encode()).digest() * 2048  # 64 KiB
    response = web.StreamResponse(headers={"ETag": etag})
    response.content_type = "application/octet-stream"
    response.content_length = _FILE_SIZE
    await response.prepare(request)
    for _ in range(_FILE_SIZE // len(block)):
        await response.write(block)
    await response.write_eof()
    return response


# --------------------------------------------------------------------------- slow.demo.test


def _slow(design: Design) -> web.Application:
    app = web.Application()

    async def report(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_DELAY)
        n = int(request.match_info["n"])
        if not 1 <= n <= design.slow_reports:
            raise web.HTTPNotFound()
        body = json.dumps({"report": n, "ready": True}) + "\n"
        return _page(request, body, content_type="application/json")

    app.router.add_get(r"/reports/{n:\d+}.json", report)
    return app


# --------------------------------------------------------------------------- the proxy


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _known_hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer only for the demo's hosts: a request for any other is refused with 502, as a
    proxy that cannot reach it would (the demo never touches the network)."""
    host = request.host.split(":", 1)[0].lower()
    if host not in (SHOP, API, SLOW):
        raise web.HTTPBadGateway(text=f"the demo serves only {SHOP}, {API} and {SLOW}\n")
    return await handler(request)


def demo_app(design: Design = DESIGN) -> web.Application:
    """The demo's application: the three hosts of ``design``, told apart by ``Host``."""
    app = web.Application(middlewares=[_known_hosts])
    app.add_domain(SHOP, _shop(design))
    app.add_domain(API, _api(design))
    app.add_domain(SLOW, _slow(design))
    return app


# --------------------------------------------------------------------------- the server process


def main() -> None:
    """Serve the demo app on 127.0.0.1, on a port the system picks, until standard input
    ends (the demo closes it, or its process is gone); print the port first, one line.

    ``fetch demo`` starts this as its own process (``python -m fetcher.demo_site``), so
    the server has a core of its own and the demo measures the client, not the two
    sharing one. Ctrl-C reaches the whole process group: this process ignores it and
    stops when the demo, having stopped its run, closes the pipe.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve())


async def _serve() -> None:
    runner = web.AppRunner(demo_app(), access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
