"""A crawl's secrets stay on the origin of the seed row: a page found on another origin
(scheme, host and port) gets the row's headers minus the secret ones, as a redirect there
does; a page on the seed's origin gets them all, whichever page linked to it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fetcher.models import same_origin
from tests.support import Served, run_fetch, serve_in_thread

SECRETS = {
    "Authorization": "Bearer t0k",  # [headers], from {env.TOKEN}
    "X-Key": "k-t0k",  # [headers], another name, from {env.TOKEN}
    "Cookie": "c=1",  # -H, secret by name
    "Proxy-Authorization": "Basic cHg6cHc=",  # -H, secret by name
}
PLAIN = {"User-Agent": "acme-crawler/2.0", "X-Plain": "plain", "X-Cli": "c", "X-Row": "row-1"}
TOML = (
    '[headers]\nUser-Agent = "acme-crawler/2.0"\nX-Plain = "plain"\n'
    'Authorization = "Bearer {env.TOKEN}"\nX-Key = "k-{env.TOKEN}"\n'
)
OPTIONS = (
    *("-H", "X-Cli: c", "-H", "Cookie: c=1", "-H", "Proxy-Authorization: Basic cHg6cHc="),
    *("--per-host-rate", "1000", "-q"),
)


def _linking(links: dict[str, str], *, delay: float = 0.0) -> Any:
    """A page that links to the URL ``links["to"]`` names when it is asked for."""

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        page = f'<html><body><a href="{links["to"]}">next</a></body></html>'
        return web.Response(text=page, content_type="text/html")

    return handler


@contextmanager
def _two_origins(*, slow: float = 0.0) -> Iterator[tuple[Served, Served]]:
    """The seed's origin and another one, two servers on two ports of 127.0.0.1.

    The seed's ``/start`` links to its ``/slow`` (answered after ``slow`` seconds), which
    links to the other origin's ``/b``, which links back to the seed's ``/back``.
    """
    to_b: dict[str, str] = {}
    to_back: dict[str, str] = {}
    seed_app, other_app = web.Application(), web.Application()
    seed_app.router.add_get("/start", _linking({"to": "/slow"}))
    seed_app.router.add_get("/slow", _linking(to_b, delay=slow))
    seed_app.router.add_get("/back", _linking({"to": "/start"}))
    other_app.router.add_get("/b", _linking(to_back))
    with serve_in_thread(seed_app) as seed, serve_in_thread(other_app) as other:
        to_b["to"], to_back["to"] = other.at("/b"), seed.at("/back")
        yield seed, other


def _job(workdir: Path, seed: Served, scope: str) -> Path:
    job = workdir / "seeds.csv"
    job.write_text(f"url,header:X-Row\n{seed.at('/start')},row-1\n")
    (workdir / "seeds.toml").write_text(f'{TOML}\n[crawl]\ndepth = 4\nscope = "{scope}"\n')
    return job


def _headers(served: Served, path: str) -> dict[str, str | None]:
    """The secret and plain headers of the one request ``served`` had for ``path``."""
    (request,) = [r for r in served.requests if r.path == path]
    return {name: request.headers.get(name) for name in (*SECRETS, *PLAIN)}


def _assert_secrets_stay_on_the_seeds_origin(seed: Served, other: Served) -> None:
    everything = {**SECRETS, **PLAIN}
    for path in ("/start", "/slow", "/back"):  # /back was found on the other origin
        assert _headers(seed, path) == everything, path
    found_elsewhere = {**dict.fromkeys(SECRETS), **PLAIN}
    assert _headers(other, "/b") == found_elsewhere
    assert _headers(other, "/robots.txt") == {**found_elsewhere, "X-Row": None}


@pytest.mark.parametrize("scope", ["host", "domain", "any"])
def test_a_page_found_on_another_origin_gets_the_rows_headers_but_no_secret(
    workdir: Path, scope: str
) -> None:
    """Every scope reaches the other port of 127.0.0.1 (``host`` and ``domain`` compare
    host names only), and the other port is another origin."""
    with _two_origins() as (seed, other):
        result = run_fetch("run", _job(workdir, seed, scope), *OPTIONS, env={"TOKEN": "t0k"})
    assert result.exit_code == 0, result.stderr
    _assert_secrets_stay_on_the_seeds_origin(seed, other)


def test_a_resumed_crawl_keeps_the_secrets_on_the_seeds_origin(workdir: Path) -> None:
    """The deadline stops the crawl as ``/slow`` is in flight; ``--resume`` fetches the
    other origin's ``/b`` and the seed's ``/back`` with the same headers as one run."""
    with _two_origins(slow=1.0) as (seed, other):
        job = _job(workdir, seed, "any")
        stopped = run_fetch("run", job, *OPTIONS, "--deadline", "0.5", env={"TOKEN": "t0k"})
        assert stopped.exit_code == 1, stopped.stderr
        assert [r.path for r in other.requests] == [], "the deadline came too late"
        resumed = run_fetch("run", job, *OPTIONS, "--resume", env={"TOKEN": "t0k"})
    assert resumed.exit_code == 0, resumed.stderr
    _assert_secrets_stay_on_the_seeds_origin(seed, other)


@pytest.mark.parametrize(
    ("url", "other", "same"),
    [
        ("http://a/x", "http://a:80/y?q", True),  # a default port, given or not
        ("https://A/", "https://a:443/", True),  # host names are case-insensitive
        ("http://u:p@a/", "http://a/", True),  # userinfo is no part of the origin
        ("http://a/", "https://a/", False),
        ("http://a/", "http://a:8080/", False),
        ("http://a/", "http://b.a/", False),
        ("/relative", "/relative", False),  # no origin at all
    ],
)
def test_an_origin_is_the_scheme_host_and_port(url: str, other: str, same: bool) -> None:
    assert same_origin(url, other) is same
    assert same_origin(other, url) is same
