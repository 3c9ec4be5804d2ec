"""Crawl mode end to end against a generated loopback site (tests/crawl_site.py)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from click.testing import Result

import fetcher
from fetcher.crawl import CrawlSettings
from fetcher.frontier import DONE
from fetcher.loop import GRACE_SECONDS
from tests.crawl_site import expected, site
from tests.support import (
    Served,
    manifest_records,
    run_fetch,
    serve_in_thread,
    sigint_once_asked,
)

N = 120
FAST = ("--per-host", "8", "--per-host-rate", "2000", "--no-progress")
HOLD_PAST_DEADLINE = 2.0  # seconds: a deadline's stop is never that late
REPO = Path(__file__).resolve().parents[1]


def _serve(
    n: int = N, extra: dict[str, Any] | None = None, middleware: Any = None
) -> tuple[Any, list[int]]:
    box = [0]
    app = site(n, box)
    for path, handler in (extra or {}).items():
        app.router.add_get(path, handler)
    if middleware is not None:
        app.middlewares.append(middleware)
    return app, box


def _job(workdir: Path, server: Served, crawl: str, seeds: list[str] | None = None) -> Path:
    job = workdir / "seeds.csv"
    rows = seeds or [server.at("/p/0.html")]
    job.write_text("url\n" + "".join(f"{url}\n" for url in rows))
    (workdir / "seeds.toml").write_text("[crawl]\n" + crawl)
    return job


def _records(workdir: Path, name: str = "seeds") -> list[dict[str, Any]]:
    """The manifest's records, as fetch reads them: a line torn by a kill is not one."""
    return manifest_records(workdir / "output" / name, torn=True)


def _pages_requested(server: Served) -> list[str]:
    return [str(r.url) for r in server.requests if r.path != "/robots.txt"]


def test_crawl_fetches_exactly_the_pages_within_depth_and_scope(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 3\nstrip_query = ["utm_*"]\n')
        result = run_fetch("run", job, *FAST)
        requested = _pages_requested(server)
    assert result.exit_code == 0, result.stderr
    want = expected([server.at("/p/0.html")], N, server.port, depth=3)
    assert Counter(requested) == Counter(list(want)), "each page of the graph exactly once"
    assert not [url for url in requested if "/private/" in url or "/nofollow/" in url]
    records = {r["url"]: r for r in _records(workdir) if r["outcome"] == "fetched"}
    assert set(records) == set(want)
    for url, record in records.items():
        assert record["depth"] == want[url]
        assert (record["parent"] is None) == (record["depth"] == 0)
    # robots.txt was read once, and is not a page: no manifest record
    assert [r.path for r in server.requests].count("/robots.txt") == 1
    assert not [r for r in _records(workdir) if r["url"].endswith("/robots.txt")]


def test_depth_zero_fetches_only_the_rows(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        seeds = [server.at("/p/1.html"), server.at("/p/2.html"), server.at("/p/1.html#again")]
        job = _job(workdir, server, "depth = 0\n", seeds)
        result = run_fetch("run", job, *FAST)
        requested = _pages_requested(server)
    assert result.exit_code == 0, result.stderr
    assert sorted(requested) == sorted([server.at("/p/1.html"), server.at("/p/2.html")])


def test_scope_any_follows_the_other_host(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 1\nscope = "any"\n')
        result = run_fetch("run", job, *FAST)
        requested = _pages_requested(server)
    assert result.exit_code == 0, result.stderr
    assert server.at("/p/0.html", host="localhost") in requested
    assert len(requested) == len(set(requested))


def test_max_pages_is_a_hard_cap(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, "depth = 5\nmax_pages = 10\n")
        result = run_fetch("run", job, *FAST, "-c", "8")
        requested = _pages_requested(server)
    assert result.exit_code == 0, result.stderr
    assert len(requested) == 10


def test_include_and_exclude_filter_found_links(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        crawl = 'depth = 2\ninclude = ["/p/"]\nexclude = ["page=2", "/p/1[0-9]\\\\.html$"]\n'
        job = _job(workdir, server, crawl)
        result = run_fetch("run", job, *FAST)
        requested = _pages_requested(server)
    assert result.exit_code == 0, result.stderr
    assert len(requested) > 5
    assert all("/p/" in url and "page=2" not in url for url in requested)
    assert not [url for url in requested if re.search(r"/p/1[0-9]\.html$", url)]


def test_ignore_robots_fetches_disallowed_paths_and_warns(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, "depth = 1\n")
        result = run_fetch("run", job, *FAST, "--ignore-robots")
        requested = _pages_requested(server)
    assert "robots.txt" in result.stderr
    assert server.at("/private/0.html") in requested
    assert "/robots.txt" not in [r.path for r in server.requests]
    assert result.exit_code == 1  # the trap answers 403


def test_sitemaps_seed_the_crawl(workdir: Path) -> None:
    async def sitemap(request: web.Request) -> web.Response:
        locs = "".join(
            f"<url><loc>http://127.0.0.1:{request.url.port}/p/{i}.html</loc></url>"
            for i in (50, 60)
        )
        return web.Response(
            text=f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>',
            content_type="application/xml",
        )

    app, box = _serve(extra={"/sitemap.xml": sitemap})
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, "depth = 0\nsitemaps = true\n")
        result = run_fetch("run", job, *FAST)
        requested = _pages_requested(server)
    assert result.exit_code == 0, result.stderr
    pages = [url for url in requested if not url.endswith("sitemap.xml")]
    assert sorted(pages) == sorted(server.at(f"/p/{i}.html") for i in (0, 50, 60))
    assert not [r for r in _records(workdir) if "sitemap" in r["url"]]


def test_a_killed_crawl_resumes_to_the_same_pages(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 3\nstrip_query = ["utm_*"]\n')
        manifest = workdir / "output" / "seeds" / "manifest.jsonl"
        command = [
            sys.executable,
            "-m",
            "fetcher",
            "run",
            str(job),
            "--per-host",
            "2",
            "--per-host-rate",
            "40",
            "-q",
        ]
        child = subprocess.Popen(command, cwd=workdir, env=dict(os.environ))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if manifest.exists() and len(manifest.read_bytes().splitlines()) >= 25:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        before = {r["url"] for r in _records(workdir) if r["outcome"] == "fetched"}
        assert len(before) > 0
        server.requests.clear()
        result = run_fetch("run", job, *FAST, "--resume")
        again = _pages_requested(server)
    assert result.exit_code == 0, result.stderr
    want = expected([server.at("/p/0.html")], N, server.port, depth=3)
    fetched = {r["url"] for r in _records(workdir) if r["outcome"] == "fetched"}
    assert fetched == set(want)
    assert not before & set(again), "a page recorded before the kill was requested again"


def _assert_resumed_whole(
    workdir: Path, result: Result, before: set[str], again: list[str]
) -> None:
    """The resumed crawl ended ok with the pages of an uninterrupted one, none of those
    fetched ``before`` requested ``again``, none fetched twice."""
    assert result.exit_code == 0, result.stderr
    whole = {r["url"] for r in _records(workdir, "whole") if r["outcome"] == "fetched"}
    fetched = [r["url"] for r in _records(workdir) if r["outcome"] == "fetched"]
    assert set(fetched) == whole, "the pages of an uninterrupted crawl"
    assert not before & set(again), "a page fetched before the stop was requested again"
    assert len(fetched) == len(set(fetched)), "a page fetched twice"


@pytest.mark.parametrize(("seed", "kill_at"), [("/p/0.html", 1), ("/p/0.html", 6), ("/go", 1)])
def test_a_crawl_killed_as_a_page_is_recorded_resumes_without_loss_or_refetch(
    workdir: Path, seed: str, kill_at: int
) -> None:
    """SIGKILL just after the manifest line of a page is flushed, before the frontier
    marks the page done and takes its links (tests/chaos/crashpoint.py ``manifest``).
    ``--resume`` must not request that page again, and must still follow its links: at
    1 the page is the seed, so without them the crawl would end there. ``/go`` redirects
    to a page whose relative links resolve against the URL it was redirected to."""

    async def go(request: web.Request) -> web.Response:
        raise web.HTTPFound("/p/1.html")

    app, box = _serve(extra={"/go": go})
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 3\nstrip_query = ["utm_*"]\n', [server.at(seed)])
        assert run_fetch("run", job, *FAST, "-o", "output/whole").exit_code == 0
        command = [sys.executable, "-m", "tests.chaos.crashpoint", "manifest", str(kill_at)]
        command += ["run", str(job), *FAST, "-q"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        killed = subprocess.run(command, cwd=workdir, env=env, timeout=60, check=False)
        assert killed.returncode == -signal.SIGKILL
        before = {r["url"] for r in _records(workdir) if r["outcome"] == "fetched"}
        frontier = sqlite3.connect(workdir / "output/seeds/.fetch/frontier.sqlite")
        states = dict(frontier.execute("SELECT url, state FROM frontier").fetchall())
        frontier.close()
        assert {url for url in before if states[url] != DONE}, "the kill missed the window"
        server.requests.clear()
        result = run_fetch("run", job, *FAST, "--resume")
        again = _pages_requested(server)
    _assert_resumed_whole(workdir, result, before, again)


def test_a_crawl_stopped_by_sigint_resumes_to_the_same_pages(workdir: Path) -> None:
    """The pages a stop left unstarted are recorded as interrupted, and --resume fetches
    them (and what they link to) rather than taking them as done."""
    state = {"delay": 0.0}

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/robots.txt":
            await asyncio.sleep(state["delay"])  # in flight when the signal comes
        response: web.StreamResponse = await handler(request)
        return response

    app, box = _serve(middleware=slow)
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 3\nstrip_query = ["utm_*"]\n')
        assert run_fetch("run", job, *FAST, "-o", "output/whole").exit_code == 0
        server.requests.clear()
        state["delay"] = 0.2
        command = [sys.executable, "-m", "fetcher", "run", str(job), "-q", "-c", "2"]
        command += ["--per-host", "2", "--per-host-rate", "2000"]
        child = subprocess.Popen(command, cwd=workdir, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while len(_pages_requested(server)) < 8:  # the seed, 5 pages of depth 1, 2 of 2
                assert time.monotonic() < deadline, "the crawl did not get to depth 2"
                time.sleep(0.01)
            child.send_signal(signal.SIGINT)
            _, stderr = child.communicate(timeout=30)
        finally:
            child.kill()
            child.wait()
        assert child.returncode == 130, stderr
        kinds = Counter((r["error"] or {}).get("kind") for r in _records(workdir))
        assert kinds["interrupted"] > 0, "the stop left no page unstarted"
        before = {r["url"] for r in _records(workdir) if r["outcome"] == "fetched"}
        state["delay"] = 0.0
        server.requests.clear()
        result = run_fetch("run", job, *FAST, "--resume")
        again = _pages_requested(server)
    _assert_resumed_whole(workdir, result, before, again)


def test_crawl_delay_spaces_the_requests_to_that_host(workdir: Path) -> None:
    arrivals: list[float] = []

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nCrawl-delay: 0.25\n")

    async def page(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        links = "".join(f'<a href="/d/{i}">x</a>' for i in range(5))
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/d/{n}", page)
    with serve_in_thread(app) as server:
        job = _job(workdir, server, "depth = 1\n", [server.at("/d/start")])
        result = run_fetch("run", job, "--per-host", "4", "--per-host-rate", "1000")
    assert result.exit_code == 0, result.stderr
    assert len(arrivals) == 6
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.2, gaps


def test_a_crawl_is_polite_unless_told_otherwise(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, "depth = 0\n")
        assert run_fetch("run", job).exit_code == 0
        (record,) = (workdir / "output" / "seeds" / "runs").glob("*.json")
        options = json.loads(record.read_text())["options"]
        assert (options["per_host"], options["per_host_rate"]) == (2, 1.0)
        assert run_fetch("run", job, "--per-host", "6").exit_code == 0
        latest = max((workdir / "output" / "seeds" / "runs").glob("*.json"), key=os.path.getmtime)
        options = json.loads(latest.read_text())["options"]
        assert (options["per_host"], options["per_host_rate"]) == (6, 1.0)


def test_bad_crawl_settings_name_the_toml_line(workdir: Path) -> None:
    (workdir / "seeds.csv").write_text("url\nhttp://127.0.0.1:9/\n")
    (workdir / "seeds.toml").write_text('[crawl]\ndepth = 1\nscope = "planet"\n')
    result = run_fetch("run", workdir / "seeds.csv", "--dry-run")
    assert result.exit_code == 2
    assert "seeds.toml:3:" in result.stderr
    assert not (workdir / "output").exists()


def test_stats_and_ls_show_pages_per_depth(workdir: Path) -> None:
    app, box = _serve()
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 2\nstrip_query = ["utm_*"]\n')
        assert run_fetch("run", job, *FAST).exit_code == 0
        want = expected([server.at("/p/0.html")], N, server.port, depth=2)
    out = workdir / "output" / "seeds"
    stats = json.loads(run_fetch("stats", out, "--json").stdout)
    latest = {r["url"]: r for r in _records(workdir)}  # robots-skipped links included
    assert stats["depths"] == dict(Counter(str(r["depth"]) for r in latest.values()))
    fetched_per_depth = Counter(r["depth"] for r in latest.values() if r["outcome"] == "fetched")
    assert fetched_per_depth == Counter(want.values())
    listed = run_fetch("ls", out, "--depth", "1", "--json").stdout.splitlines()
    fetched = [json.loads(line) for line in listed if '"fetched"' in line]
    assert sorted(entry["url"] for entry in fetched) == sorted(
        url for url, depth in want.items() if depth == 1
    )
    assert all(json.loads(line)["depth"] == 1 for line in listed)
    assert "depth" in run_fetch("stats", out).stdout


def _tree(port_box: list[int], hold: dict[str, Any]) -> web.Application:
    """Pages ``/t/0`` to ``/t/14``, page i linking to 2i+1 and 2i+2: depth 3 reaches all.
    Levels 0 and 1 are on 127.0.0.1, deeper levels on ``localhost`` (the same server).
    While ``hold["armed"]``, the request ``hold["what"]`` names (arriving at
    ``hold["reached"]``) waits until the run's deadline has surely passed:
    ``HOLD_PAST_DEADLINE`` after ``hold["deadline"]`` from the run's first request (the
    deadline's clock starts before it), well inside the grace a stop gives requests in
    flight (5 s)."""

    async def wait_if_held(request: web.Request) -> None:
        if not hold["armed"]:
            return
        now = time.monotonic()
        hold.setdefault("first", now)
        if f"{request.url.host} {request.path}" == hold["what"]:
            hold["reached"] = now
            await asyncio.sleep(hold["first"] + hold["deadline"] + HOLD_PAST_DEADLINE - now)

    async def robots(request: web.Request) -> web.Response:
        await wait_if_held(request)
        return web.Response(text="User-agent: *\nDisallow: /private/\n")

    async def page(request: web.Request) -> web.Response:
        await wait_if_held(request)
        i = int(request.match_info["n"])
        links = "".join(
            f'<a href="http://{"127.0.0.1" if c <= 2 else "localhost"}:{port_box[0]}/t/{c}">{c}</a>'
            for c in (2 * i + 1, 2 * i + 2)
            if c < 15
        )
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/t/{n}", page)
    return app


@pytest.mark.parametrize(
    "hold_at",
    [
        "127.0.0.1 /t/2",  # the deadline comes as the last page of level 1 is in flight
        "localhost /robots.txt",  # it comes as level 2 waits for its host's robots.txt:
        # level 2 is taken from the frontier, and nothing is queued or in flight
    ],
)
def test_a_crawl_stopped_by_the_deadline_between_levels_says_so_and_resumes(
    workdir: Path, hold_at: str
) -> None:
    """The deadline stops the crawl with level 2 not started. Like the rows a deadline
    leaves in a batch, those pages are recorded as interrupted: the run exits 1 and its
    record says interrupted, and --resume fetches exactly the pages not fetched yet."""
    hold: dict[str, Any] = {"armed": False, "what": hold_at, "deadline": 1.0}
    box = [0]
    with serve_in_thread(_tree(box, hold)) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 3\nscope = "any"\n', [server.at("/t/0")])
        assert run_fetch("run", job, *FAST, "-o", "output/whole").exit_code == 0
        whole = {r["url"] for r in _records(workdir, "whole") if r["outcome"] == "fetched"}
        page = {
            n: server.at(f"/t/{n}", host="127.0.0.1" if n <= 2 else "localhost") for n in range(15)
        }
        assert whole == set(page.values())
        server.requests.clear()

        hold["armed"] = True
        started = time.monotonic()  # the deadline's clock starts after this
        result = run_fetch("run", job, *FAST, "-q", "--json", "--deadline", "1")
        hold["armed"] = False
        reached = hold.get("reached", started + 1)
        assert reached < started + 1, "the deadline came before the crawl got there"
        first = Counter(_pages_requested(server))
        server.requests.clear()
        resumed = run_fetch("run", job, *FAST, "-q", "--resume")
        again = Counter(_pages_requested(server))

    assert first == Counter(page[n] for n in range(3)), "levels 0 and 1, each once"
    summary = json.loads(result.stdout)
    run_record = json.loads((workdir / f"output/seeds/runs/{summary['run']}.json").read_text())
    assert (result.exit_code, run_record["state"]) == (1, "interrupted"), "it did not finish"
    assert run_record["exit_code"] == 1
    records = _records(workdir)
    interrupted = {r["url"] for r in records if (r["error"] or {}).get("kind") == "interrupted"}
    assert interrupted == {page[n] for n in range(3, 7)}, "level 2 is recorded as left"
    assert run_record["errors"] == {"interrupted": 4}

    assert resumed.exit_code == 0, resumed.stderr
    assert again == Counter(url for url in whole if url not in first), "the rest, each once"
    fetched = [r["url"] for r in _records(workdir) if r["outcome"] == "fetched"]
    assert sorted(fetched) == sorted(whole), "the pages of an uninterrupted crawl, each once"


def test_a_stop_cuts_a_stalled_robots_txt_short(workdir: Path) -> None:
    """SIGINT while robots.txt stalls ends the run after the grace period, not the
    --timeout; the pages waiting on it are interrupted, and --resume crawls them."""
    state = {"stall": True}
    asked = threading.Event()

    @web.middleware
    async def stall(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/robots.txt" and state["stall"]:
            asked.set()
            await asyncio.sleep(120)
        response: web.StreamResponse = await handler(request)
        return response

    app, box = _serve(middleware=stall)
    with serve_in_thread(app) as server:
        box[0] = server.port
        job = _job(workdir, server, 'depth = 1\nstrip_query = ["utm_*"]\n')
        code, took, stderr = sigint_once_asked(job, workdir, asked, "robots.txt")
        assert code == 130, stderr
        assert took < GRACE_SECONDS + 10  # not the 60 s --timeout
        assert _pages_requested(server) == []
        (seed,) = _records(workdir)
        assert (seed["outcome"], seed["error"]["kind"]) == ("failed", "interrupted")
        state["stall"] = False
        result = run_fetch("run", job, *FAST, "--resume")
    assert result.exit_code == 0, result.stderr
    want = expected([server.at("/p/0.html")], N, server.port, depth=1)
    fetched = {r["url"] for r in _records(workdir) if r["outcome"] == "fetched"}
    assert fetched == set(want)


def _pages_app(pages: dict[str, str], redirects: dict[str, str]) -> web.Application:
    """A site of HTML pages (path -> body) and 301s (path -> location)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path in redirects:
            raise web.HTTPMovedPermanently(redirects[request.path])
        if request.path not in pages:
            raise web.HTTPNotFound()
        return web.Response(text=pages[request.path], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


def _assert_every_page_stored(workdir: Path, pages: dict[str, str], urls: set[str]) -> None:
    """Each URL has one ok record whose file holds its page, with its size and sha256,
    and ``fetch show`` finds it there."""
    records = {r["url"]: r for r in _records(workdir)}
    assert set(records) == urls
    for url, record in records.items():
        assert record["outcome"] == "fetched", (url, record["error"])
        body = (workdir / "output/seeds" / record["path"]).read_bytes()
        assert body == pages[urlsplit(record["final_url"] or url).path].encode(), url
        assert (record["size"], record["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
        shown = json.loads(run_fetch("show", "output/seeds", url, "--json").stdout)
        assert shown["record"]["path"] == record["path"]
    assert len({r["path"] for r in records.values()}) == len(records)


def test_a_folder_linked_without_its_slash_stores_the_pages_below_it(workdir: Path) -> None:
    """``/docs`` answers 301 to ``/docs/`` (as nginx and Apache do), whose page links
    below it: ``/docs`` is stored as a file, and so are the pages in the folder."""
    pages = {
        "/": '<a href="/docs">docs</a>',
        "/docs/": '<a href="intro">intro</a> <a href="/docs/">here</a> <a href="/docs">up</a>',
        "/docs/intro": '<a href="/docs/intro/part-1">one</a>',
        "/docs/intro/part-1": "the end",
    }
    with serve_in_thread(_pages_app(pages, {"/docs": "/docs/"})) as server:
        job = _job(workdir, server, "depth = 4\n", [server.at("/")])
        result = run_fetch("run", job, *FAST)
        paths = {r["url"]: r["path"] for r in _records(workdir)}
        again = run_fetch("run", job, *FAST)  # a refresh: each page again, where it was
    assert result.exit_code == 0, result.stderr
    urls = {server.at(path) for path in [*pages, "/docs"]}
    _assert_every_page_stored(workdir, pages, urls)
    assert again.exit_code == 0, again.stderr
    assert len(_records(workdir)) == 2 * len(urls)
    assert {r["url"]: r["path"] for r in _records(workdir)} == paths


def test_a_folder_and_its_index_html_are_two_pages_stored_apart(workdir: Path) -> None:
    pages = {
        "/": '<a href="/blog/">blog</a> <a href="/blog/index.html">old blog</a>',
        "/blog/": "the blog as it is now",
        "/blog/index.html": "the blog as it was, a much longer page than the new one",
    }
    with serve_in_thread(_pages_app(pages, {})) as server:
        job = _job(workdir, server, "depth = 1\n", [server.at("/")])
        result = run_fetch("run", job, *FAST)
    assert result.exit_code == 0, result.stderr
    _assert_every_page_stored(workdir, pages, {server.at(path) for path in pages})


def _fan_app(pages: int) -> web.Application:
    """``/f/0`` links to ``/f/1`` ... ``/f/<pages-1>``; no robots.txt."""

    async def page(request: web.Request) -> web.Response:
        links = "".join(f'<a href="/f/{i}">{i}</a>' for i in range(pages))
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/f/{n}", page)
    return app


def test_per_host_rate_in_the_sidecar_paces_a_crawl(workdir: Path) -> None:
    # 20 pages at the polite 1 a second would take 19 s; the sidecar says 50 a second
    with serve_in_thread(_fan_app(20)) as server:
        job = _job(workdir, server, "depth = 1\n", [server.at("/f/0")])
        (workdir / "seeds.toml").write_text("[crawl]\ndepth = 1\n[fetch]\nper_host_rate = 50\n")
        started = time.monotonic()
        result = run_fetch("run", job, "-q", "--no-progress")
        elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    assert len(_pages_requested(server)) == 20
    assert elapsed < 8, elapsed
    (record,) = (workdir / "output" / "seeds" / "runs").glob("*.json")
    options = json.loads(record.read_text())["options"]
    assert (options["per_host"], options["per_host_rate"]) == (2, 50)


async def test_the_library_crawls_as_fetch_run_does(
    tmp_path: Path, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = await aiohttp_server(_fan_app(3))
    job_path = tmp_path / "seeds.csv"
    job_path.write_text(f"url\n{server.make_url('/f/0')}\n")
    (tmp_path / "seeds.toml").write_text("[crawl]\ndepth = 1\n[fetch]\nper_host = 3\n")
    job = fetcher.load_job(job_path)

    def options(out: Path) -> dict[str, Any]:
        (record,) = (out / "runs").glob("*.json")
        return dict(json.loads(record.read_text())["options"])

    # no config: the job's own [crawl] and [fetch], over a crawl's polite defaults
    out = tmp_path / "output" / "seeds"
    assert (await fetcher.run_batch(job)).outcomes == {"fetched": 3}
    assert (options(out)["per_host"], options(out)["per_host_rate"]) == (3, 1.0)
    # a config made by hand that crawls is polite too
    out = tmp_path / "made"
    config = fetcher.FetchConfig(output=out, crawl=CrawlSettings(depth=1))
    assert (await fetcher.run_batch(job, config)).outcomes == {"fetched": 3}
    assert (options(out)["per_host"], options(out)["per_host_rate"]) == (2, 1.0)


def test_a_base_href_that_is_no_url_is_ignored(workdir: Path) -> None:
    """A browser resolves against the page's own URL when its base is no URL; the crawl
    did not stop at such a page."""
    pages = {
        "/": '<base href="http://[broken/"><a href="next">next</a>',
        "/next": "the end",
    }
    with serve_in_thread(_pages_app(pages, {})) as server:
        job = _job(workdir, server, "depth = 1\n", [server.at("/")])
        result = run_fetch("run", job, *FAST)
    assert result.exit_code == 0, result.stderr
    _assert_every_page_stored(workdir, pages, {server.at(path) for path in pages})
