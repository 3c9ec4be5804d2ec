"""robots.txt and sitemaps go out as the rows do: the run's headers, the host's slots and
pacers, redirects with their secret rules; and they are still not pages."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from fetcher import __version__
from fetcher.loop import GRACE_SECONDS
from tests.support import (
    Served,
    manifest_records,
    run_fetch,
    serve_in_thread,
    sigint_once_asked,
)


@dataclass
class Arrival:
    """One request as the server saw it."""

    host: str  # the Host header's name, without the port
    path: str
    headers: CIMultiDictProxy[str]
    at: float


class Site:
    """A loopback site that records every request and the most requests it had in
    flight at once to each host name (``127.0.0.1`` and ``localhost`` are one server
    under two hosts)."""

    def __init__(self) -> None:
        self.app = web.Application(middlewares=[self._record])
        self.arrivals: list[Arrival] = []
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.server: Served | None = None

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.url.host or ""
        self.arrivals.append(Arrival(host, request.path, request.headers, time.monotonic()))
        self.in_flight[host] = self.in_flight.get(host, 0) + 1
        self.most[host] = max(self.most.get(host, 0), self.in_flight[host])
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self.in_flight[host] -= 1

    def at(self, path: str, host: str = "127.0.0.1") -> str:
        assert self.server is not None
        return self.server.at(path, host)

    def seen(self, path: str, host: str = "127.0.0.1") -> list[Arrival]:
        return [a for a in self.arrivals if (a.host, a.path) == (host, path)]

    def one(self, path: str, host: str = "127.0.0.1") -> Arrival:
        (arrival,) = self.seen(path, host)
        return arrival


async def _page(request: web.Request) -> web.Response:
    return web.Response(text="<html><body>page</body></html>", content_type="text/html")


def _urlset(*urls: str) -> web.Response:
    entries = "".join(f"<url><loc>{url}</loc></url>" for url in urls)
    xmlns = "http://www.sitemaps.org/schemas/sitemap/0.9"
    return web.Response(text=f'<urlset xmlns="{xmlns}">{entries}</urlset>', content_type="text/xml")


def _crawl(workdir: Path, header: str, rows: list[str], crawl: str, toml: str = "") -> Path:
    job = workdir / "seeds.csv"
    job.write_text(f"{header}\n" + "".join(f"{row}\n" for row in rows))
    (workdir / "seeds.toml").write_text(f"{toml}\n[crawl]\n{crawl}")
    return job


def _records(workdir: Path) -> list[dict[str, Any]]:
    return manifest_records(workdir / "output" / "seeds")


def _sitemap_site() -> Site:
    """robots.txt names ``/maps/more.xml``; ``/sitemap.xml`` lists ``/a``, it ``/b``."""
    site = Site()

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text=f"User-agent: *\nSitemap: {site.at('/maps/more.xml')}\n")

    async def sitemap(request: web.Request) -> web.Response:
        return _urlset(site.at("/a"))

    async def more(request: web.Request) -> web.Response:
        return _urlset(site.at("/b"))

    site.app.router.add_get("/robots.txt", robots)
    site.app.router.add_get("/sitemap.xml", sitemap)
    site.app.router.add_get("/maps/more.xml", more)
    site.app.router.add_get("/{page}", _page)
    return site


FILES = ("/robots.txt", "/sitemap.xml", "/maps/more.xml")


def test_robots_and_sitemaps_carry_the_default_user_agent(workdir: Path) -> None:
    site = _sitemap_site()
    with serve_in_thread(site.app) as site.server:
        job = _crawl(workdir, "url", [site.at("/a")], "depth = 0\nsitemaps = true\n")
        result = run_fetch("run", job, "--per-host-rate", "1000", "--no-progress")
    assert result.exit_code == 0, result.stderr
    for path in (*FILES, "/a", "/b"):
        assert site.one(path).headers.getall("User-Agent") == [f"fetcher/{__version__}"], path
    # They are still not pages: the manifest holds the two pages only.
    assert sorted(r["url"] for r in _records(workdir)) == [site.at("/a"), site.at("/b")]


def test_robots_and_sitemaps_carry_the_runs_headers_but_not_a_rows(workdir: Path) -> None:
    """The built-in headers, ``[headers]`` and ``-H`` go on every request; a row's
    ``header:<Name>`` column, and a ``[headers]`` template that reads a column, only on
    the pages of that row."""
    site = _sitemap_site()
    with serve_in_thread(site.app) as site.server:
        job = _crawl(
            workdir,
            "url,header:X-Row,team",
            [f"{site.at('/a')},row-1,blue"],
            "depth = 0\nsitemaps = true\n",
            toml='[headers]\nUser-Agent = "acme-crawler/2.0"\n'
            'Authorization = "Bearer {env.TOKEN}"\nX-Team = "{team}"\n',
        )
        result = run_fetch(
            "run", job, "-H", "X-Cli: c", "--per-host-rate", "1000", "-q", env={"TOKEN": "t0k"}
        )
    assert result.exit_code == 0, result.stderr
    for path in (*FILES, "/a", "/b"):
        headers = site.one(path).headers
        assert headers.getall("User-Agent") == ["acme-crawler/2.0"], path
        assert headers.getall("X-Cli") == ["c"], path
        assert headers.getall("Authorization") == ["Bearer t0k"], path  # the same origin
    for path in FILES:
        assert "X-Row" not in site.one(path).headers, path
        assert "X-Team" not in site.one(path).headers, path
    page = site.one("/a").headers
    assert (page["X-Row"], page["X-Team"]) == ("row-1", "blue")


def test_a_robots_txt_redirected_to_another_origin_does_not_carry_the_secrets(
    workdir: Path,
) -> None:
    """localhost's robots.txt redirects to 127.0.0.1's, which names a sitemap there and
    one back on localhost: the secrets go to localhost's files only."""
    site = Site()

    async def robots(request: web.Request) -> web.StreamResponse:
        if request.url.host == "localhost":
            raise web.HTTPFound(site.at("/robots.txt"))
        sitemaps = (site.at("/elsewhere.xml"), site.at("/named.xml", host="localhost"))
        return web.Response(text="User-agent: *\n" + "".join(f"Sitemap: {s}\n" for s in sitemaps))

    async def sitemap(request: web.Request) -> web.Response:
        return _urlset(site.at("/a", host="localhost"))

    site.app.router.add_get("/robots.txt", robots)
    for path in ("/sitemap.xml", "/elsewhere.xml", "/named.xml"):
        site.app.router.add_get(path, sitemap)
    site.app.router.add_get("/{page}", _page)
    with serve_in_thread(site.app) as site.server:
        job = _crawl(
            workdir,
            "url",
            [site.at("/a", host="localhost")],
            "depth = 0\nsitemaps = true\n",
            toml='[headers]\nAuthorization = "Bearer {env.TOKEN}"\nX-Key = "k-{env.TOKEN}"\n',
        )
        result = run_fetch(
            "run", job, "-H", "Cookie: c=1", "--per-host-rate", "1000", "-q", env={"TOKEN": "t0k"}
        )
    assert result.exit_code == 0, result.stderr
    secrets = {"Authorization": "Bearer t0k", "X-Key": "k-t0k", "Cookie": "c=1"}
    for path in ("/robots.txt", "/sitemap.xml", "/named.xml", "/a"):
        headers = site.one(path, host="localhost").headers
        assert {name: headers.get(name) for name in secrets} == secrets, path
    for path in ("/robots.txt", "/elsewhere.xml"):  # the hop, and a sitemap it named
        headers = site.one(path).headers
        assert not [name for name in secrets if name in headers], path
        assert headers["User-Agent"] == f"fetcher/{__version__}", path


def test_the_robots_txt_of_an_origin_no_row_names_does_not_carry_the_secrets(
    workdir: Path,
) -> None:
    """A crawl with ``scope = "any"`` reaches 127.0.0.1 from a row on localhost: the
    secrets go to the robots.txt of the row's origin only."""
    site = Site()

    async def start(request: web.Request) -> web.Response:
        link = f'<a href="{site.at("/other")}">other</a>'
        return web.Response(text=f"<html><body>{link}</body></html>", content_type="text/html")

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /private/\n")

    site.app.router.add_get("/robots.txt", robots)
    site.app.router.add_get("/start", start)
    site.app.router.add_get("/{page}", _page)
    with serve_in_thread(site.app) as site.server:
        job = _crawl(
            workdir,
            "url",
            [site.at("/start", host="localhost")],
            'depth = 1\nscope = "any"\n',
            toml='[headers]\nAuthorization = "Bearer {env.TOKEN}"\n',
        )
        result = run_fetch("run", job, "--per-host-rate", "1000", "-q", env={"TOKEN": "t0k"})
    assert result.exit_code == 0, result.stderr
    assert site.seen("/other"), "the link was not followed"
    row_origin = site.one("/robots.txt", host="localhost").headers
    assert row_origin.get("Authorization") == "Bearer t0k"
    other = site.one("/robots.txt").headers
    assert "Authorization" not in other
    assert other["User-Agent"] == f"fetcher/{__version__}"


def test_with_one_slot_per_host_robots_txt_waits_for_the_page_in_flight(workdir: Path) -> None:
    """127.0.0.1's ``/slow`` is in flight when localhost's robots.txt redirects to
    127.0.0.1: with ``--per-host 1`` that hop waits for the page."""
    site = Site()

    async def robots(request: web.Request) -> web.StreamResponse:
        if request.url.host == "localhost":
            await asyncio.sleep(0.2)  # /slow has surely started by now
            raise web.HTTPFound(site.at("/robots-of-localhost.txt"))
        return web.Response(text="User-agent: *\n")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return await _page(request)

    site.app.router.add_get("/robots.txt", robots)
    site.app.router.add_get("/robots-of-localhost.txt", robots)
    site.app.router.add_get("/slow", slow)
    site.app.router.add_get("/{page}", _page)
    with serve_in_thread(site.app) as site.server:
        seeds = [site.at("/slow"), site.at("/a", host="localhost")]
        job = _crawl(workdir, "url", seeds, "depth = 0\n")
        result = run_fetch("run", job, "--per-host", "1", "--per-host-rate", "1000", "-q")
    assert result.exit_code == 0, result.stderr
    assert site.seen("/robots-of-localhost.txt"), "the redirect was not followed"
    assert site.one("/slow").at < site.one("/robots-of-localhost.txt").at
    assert site.most["127.0.0.1"] == 1, "a robots.txt request overlapped a page"


def test_robots_txt_and_sitemaps_count_toward_the_hosts_rate(workdir: Path) -> None:
    site = _sitemap_site()
    with serve_in_thread(site.app) as site.server:
        job = _crawl(workdir, "url", [site.at("/a")], "depth = 0\nsitemaps = true\n")
        result = run_fetch("run", job, "--per-host-rate", "4", "-q")
    assert result.exit_code == 0, result.stderr
    assert [a.path for a in site.arrivals] == [*FILES, "/a", "/b"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(site.arrivals)]
    assert min(gaps) >= 0.2, gaps  # a start every 0.25 s


def test_a_crawl_delay_counts_from_the_robots_txt_request(workdir: Path) -> None:
    site = Site()

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nCrawl-delay: 0.5\n")

    site.app.router.add_get("/robots.txt", robots)
    site.app.router.add_get("/{page}", _page)
    with serve_in_thread(site.app) as site.server:
        job = _crawl(workdir, "url", [site.at("/a"), site.at("/b")], "depth = 0\n")
        result = run_fetch("run", job, "--per-host-rate", "1000", "-q")
    assert result.exit_code == 0, result.stderr
    assert [a.path for a in site.arrivals] == ["/robots.txt", "/a", "/b"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(site.arrivals)]
    assert min(gaps) >= 0.4, gaps


def test_a_long_robots_txt_is_read_whole(workdir: Path) -> None:
    """The rule at the end of a 300 KB robots.txt (below the 500 KiB RFC 9309 asks
    for) is obeyed: the body is read to its end, not as far as the first read got."""
    site = Site()

    async def robots(request: web.Request) -> web.Response:
        padding = "# a comment that takes up room\n" * 10_000
        return web.Response(text=f"User-agent: *\n{padding}Disallow: /private/\n")

    site.app.router.add_get("/robots.txt", robots)
    site.app.router.add_get("/{tail:.*}", _page)
    with serve_in_thread(site.app) as site.server:
        job = _crawl(workdir, "url", [site.at("/private/x"), site.at("/a")], "depth = 0\n")
        result = run_fetch("run", job, "--per-host-rate", "1000", "-q")
    assert result.exit_code == 0, result.stderr
    assert [a.path for a in site.arrivals] == ["/robots.txt", "/a"]
    outcomes = {r["url"]: r["outcome"] for r in _records(workdir)}
    assert outcomes == {site.at("/private/x"): "skipped", site.at("/a"): "fetched"}


def test_a_stop_cuts_a_stalled_sitemap_short(workdir: Path) -> None:
    """SIGINT while a sitemap stalls ends the run after the grace period, as it does a
    stalled robots.txt or page, not after the --timeout; the seed is left interrupted."""
    asked = threading.Event()
    site = Site()

    async def sitemap(request: web.Request) -> web.Response:
        asked.set()
        await asyncio.sleep(120)
        return _urlset()

    site.app.router.add_get("/sitemap.xml", sitemap)
    site.app.router.add_get("/{tail:.*}", _page)  # robots.txt: an HTML page, no rules
    with serve_in_thread(site.app) as site.server:
        job = _crawl(workdir, "url", [site.at("/a")], "depth = 0\nsitemaps = true\n")
        code, took, stderr = sigint_once_asked(job, workdir, asked, "the sitemap")
    assert code == 130, stderr
    assert took < GRACE_SECONDS + 10  # not the 60 s --timeout
    assert [a.path for a in site.arrivals] == ["/robots.txt", "/sitemap.xml"]
    (seed,) = _records(workdir)
    assert (seed["outcome"], seed["error"]["kind"]) == ("failed", "interrupted")


def test_a_page_whose_row_a_resumed_job_lost_carries_the_runs_headers(workdir: Path) -> None:
    """A crawl stopped with ``/c`` (found from the row on line 3) left, resumed from a
    job without that row: ``/c`` goes out with the run's headers all the same."""
    site = Site()

    def linking(to: str, delay: float = 0.0) -> Any:
        async def handler(request: web.Request) -> web.Response:
            await asyncio.sleep(delay)
            page = f'<html><body><a href="{to}">next</a></body></html>'
            return web.Response(text=page, content_type="text/html")

        return handler

    site.app.router.add_get("/start", linking("/slow"))
    site.app.router.add_get("/slow", linking("/c", delay=1.0))  # in flight at the deadline
    site.app.router.add_get("/{tail:.*}", _page)
    options = ("-H", "X-Cli: c", "--per-host-rate", "1000", "-q")
    with serve_in_thread(site.app) as site.server:
        job = _crawl(workdir, "url", [site.at("/a"), site.at("/start")], "depth = 2\n")
        stopped = run_fetch("run", job, *options, "--deadline", "0.5")
        assert site.seen("/slow"), stopped.stderr
        assert not site.seen("/c"), "the deadline came too late"
        job.write_text(f"url\n{site.at('/a')}\n")  # line 3 is gone
        resumed = run_fetch("run", job, *options, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    headers = site.one("/c").headers
    assert headers.getall("User-Agent") == [f"fetcher/{__version__}"]
    assert headers.getall("X-Cli") == ["c"]
