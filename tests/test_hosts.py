"""Which host a URL names: every place that asks -- the per-host limits, the output
layout's folder, a crawl's scope, ``same_origin``, the index's host column (what ``fetch
stats`` counts) and ``NO_PROXY`` -- agrees, however the URL spells it: case, a trailing
dot, an internationalised name in Unicode or ``xn--``, an IPv6 literal, a default port
written out, a user name or password holding ``@`` and ``:``.

The table says, for each spelling, the host and port it names; each place is asked in
its own terms. Then the same through ``fetch run`` and a real server (a proxy on
127.0.0.1 answers for every host, so no name is looked up)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from fetcher.checks import check_url
from fetcher.crawl import in_scope, registrable_domain
from fetcher.limits import host_key
from fetcher.models import same_origin
from fetcher.paths import url_path
from fetcher.proxies import ProxyRoutes
from fetcher.store.index import LATEST_COLUMNS, latest_row
from fetcher.store.records import ManifestRecord
from tests.support import Tracker, files_under, manifest, run_fetch, serve_in_thread, url_job

# (a spelling of a URL, the host it names, its port, the output layout's folder)
SPELLINGS = [
    ("http://example.com/", "example.com", 80, "example.com"),
    ("HTTP://Example.COM/", "example.com", 80, "example.com"),
    ("http://example.com./", "example.com", 80, "example.com"),
    ("http://EXAMPLE.com.:80/", "example.com", 80, "example.com"),
    ("http://example.com:80/", "example.com", 80, "example.com"),
    ("http://example.com:080/", "example.com", 80, "example.com"),
    ("http://user:p@ss@example.com/", "example.com", 80, "example.com"),
    ("http://u@x:p:q@Example.com./", "example.com", 80, "example.com"),
    ("http://example.com:8080/", "example.com", 8080, "example.com_8080"),
    ("http://EXAMPLE.com.:8080/", "example.com", 8080, "example.com_8080"),
    ("http://u:p:w@example.com:8080/", "example.com", 8080, "example.com_8080"),
    ("https://example.com/", "example.com", 443, "example.com"),
    ("https://Example.com.:443/", "example.com", 443, "example.com"),
    ("https://example.com:80/", "example.com", 80, "example.com_80"),
    ("http://bücher.de/", "xn--bcher-kva.de", 80, "xn--bcher-kva.de"),
    ("http://BÜCHER.de./", "xn--bcher-kva.de", 80, "xn--bcher-kva.de"),
    ("http://xn--bcher-kva.de/", "xn--bcher-kva.de", 80, "xn--bcher-kva.de"),
    ("http://XN--BCHER-KVA.DE:80/", "xn--bcher-kva.de", 80, "xn--bcher-kva.de"),
    ("http://127.0.0.1/", "127.0.0.1", 80, "127.0.0.1"),
    ("http://127.0.0.1./", "127.0.0.1", 80, "127.0.0.1"),
    ("http://[::1]/", "::1", 80, "__1"),
    ("http://[0:0:0:0:0:0:0:1]:80/", "::1", 80, "__1"),
    ("http://[::1]:8080/", "::1", 8080, "__1_8080"),
    ("http://u:p@[0::1]:8080/", "::1", 8080, "__1_8080"),
]
IDS = [spelling for spelling, *_ in SPELLINGS]
# URLs that name no host, or cannot be sent: refused before anything is sent.
NO_HOST = [
    "http:///x",
    "http://./x",
    "http://../x",
    "http://:80/x",
    "http://user@/x",
    "http://example.com:abc/x",
    "http://example.com:99999/x",
    "http://[::1/x",
    "http://" + "ü" * 64 + ".de/x",  # a label too long for IDNA
]


def _canonical(host: str, port: int) -> str:
    """A plain spelling of the URL of ``host:port`` over http (to compare others with)."""
    return str(URL.build(scheme="http", host=host, port=port, path="/"))


def _index_host(url: str) -> object:
    return latest_row(0, ManifestRecord(url=url))[LATEST_COLUMNS.index("host")]


@pytest.mark.parametrize(("url", "host", "port", "folder"), SPELLINGS, ids=IDS)
def test_every_place_names_the_same_host(url: str, host: str, port: int, folder: str) -> None:
    bracketed = f"[{host}]" if ":" in host else host
    scheme = URL(url).scheme
    plain = str(URL.build(scheme=scheme, host=host, port=port, path="/"))
    assert check_url(url) is None
    assert host_key(url) == host_key(plain) == f"{bracketed}:{port}"
    assert url_path(url + "x.txt") == f"{folder}/x.txt"
    assert same_origin(url, plain)
    assert same_origin(plain, url)
    assert in_scope(url, plain, "host")
    assert in_scope(plain, url, "host")
    assert in_scope(url, _canonical(host, 1), "domain")
    shown_port = "" if port == {"http": 80, "https": 443}[scheme] else f":{port}"
    assert _index_host(url) == f"{bracketed}{shown_port}"
    routes = ProxyRoutes.resolve("http://proxy:3128", host, {})
    assert routes.for_url(URL(url)) is None  # NO_PROXY names the host: direct
    assert ProxyRoutes.resolve("http://proxy:3128", "other.example", {}).for_url(URL(url))


@pytest.mark.parametrize(
    "pattern", ["bücher.de", "BÜCHER.DE", ".bücher.de", "xn--bcher-kva.de", "bücher.de."]
)
@pytest.mark.parametrize("url", ["http://bücher.de/", "http://www.xn--bcher-kva.de./"])
def test_no_proxy_names_an_internationalised_host_either_way(pattern: str, url: str) -> None:
    routes = ProxyRoutes.resolve("http://proxy:3128", pattern, {})
    assert routes.for_url(URL(url)) is None


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://example.com/", "http://example.com:8080/"),
        ("http://[::1]/", "http://127.0.0.1/"),
        ("http://bücher.de/", "http://bucher.de/"),
        ("http://example.com/", "http://example.com.evil/"),
        ("http://example.com@evil.example/", "http://example.com/"),
        ("http://example.com:80@evil.example/", "http://example.com/"),
    ],
)
def test_other_hosts_and_ports_stay_apart(one: str, other: str) -> None:
    assert not same_origin(one, other)
    assert host_key(one) != host_key(other)
    assert url_path(one).split("/")[0] != url_path(other).split("/")[0]
    assert _index_host(one) != _index_host(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [("http://example.com/", "https://example.com/"), ("http://a:80/", "https://a/")],
)
def test_another_scheme_is_another_origin_of_the_same_host(one: str, other: str) -> None:
    assert not same_origin(one, other)
    assert in_scope(one, other, "host")
    assert url_path(one).split("/")[0] == url_path(other).split("/")[0]  # one folder a host


@pytest.mark.parametrize("url", NO_HOST)
def test_a_url_that_names_no_host_is_refused_and_has_no_origin(url: str) -> None:
    assert check_url(url) is not None
    assert not same_origin(url, url)
    assert not in_scope(url, url, "host")
    assert url_path(url) == "unknown-host/x.body"


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("www.Example.co.uk.", "example.co.uk"),
        ("a.BÜCHER.de", "xn--bcher-kva.de"),
        ("[::1]", "::1"),
        ("127.0.0.1.", "127.0.0.1"),
    ],
)
def test_a_registrable_domain_is_of_the_canonical_host(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


# --------------------------------------------------------------------------- through fetch


def _answering_proxy(tracker: Tracker) -> web.Application:
    """An HTTP proxy that answers every absolute-form request itself (``ok <target>``),
    after a while, noting how many it holds at once; so a job may name any host."""

    async def answer(request: web.Request) -> web.Response:
        with tracker.hold("proxy", "all"):
            await asyncio.sleep(0.05)
        if request.path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        return web.Response(text=f"ok {request.raw_path} {request.headers.get('X-Token')}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def test_one_host_spelt_two_ways_shares_its_per_host_limit(workdir: Path) -> None:
    tracker = Tracker()
    urls = [
        url
        for n in range(6)
        for url in (f"HTTP://Example.COM.:80/a{n}", f"http://example.com/b{n}")
    ]
    with serve_in_thread(_answering_proxy(tracker)) as proxy:
        job = url_job(workdir, urls)
        result = run_fetch(
            "run", job, "-o", "out", "-c", "8", "--per-host", "1", "--proxy", proxy.url, "-q"
        )
    assert result.exit_code == 0, result.output
    assert len(proxy.requests) == 12
    assert tracker.peak["all"] == 1  # one host: one request at a time, however spelt


def test_one_host_spelt_many_ways_is_one_folder_and_one_host_in_stats(workdir: Path) -> None:
    urls = [
        "http://bücher.de/a.txt",
        "http://xn--bcher-kva.de/b.txt",
        "http://BÜCHER.de./c.txt",
        "http://example.com:80/d.txt",
        "http://Example.com./e.txt",
        "http://example.com/f.txt",
        "http://example.com:080/g.txt",
    ]
    with serve_in_thread(_answering_proxy(Tracker())) as proxy:
        job = url_job(workdir, urls)
        result = run_fetch("run", job, "-o", "out", "--proxy", proxy.url, "-q")
        assert result.exit_code == 0, result.output
    out = workdir / "out"
    assert {record["path"] for record in manifest(out)} == {
        "xn--bcher-kva.de/a.txt",
        "xn--bcher-kva.de/b.txt",
        "xn--bcher-kva.de/c.txt",
        "example.com/d.txt",
        "example.com/e.txt",
        "example.com/f.txt",
        "example.com/g.txt",
    }
    assert {path.split("/")[0] for path in files_under(out) if "/" in path} >= {
        "xn--bcher-kva.de",
        "example.com",
    }
    stats = json.loads(run_fetch("stats", out, "--json").stdout)
    assert stats["hosts"] == {"example.com": 4, "xn--bcher-kva.de": 3}


def test_a_redirect_to_the_same_host_spelt_otherwise_keeps_the_secrets(workdir: Path) -> None:
    with serve_in_thread(_answering_proxy(Tracker())) as proxy:
        target = "http://example.com/x"
        job = url_job(workdir, [f"http://EXAMPLE.com.:80/redirect?to={target}"])
        result = run_fetch(
            "run", job, "-o", "out", "--proxy", proxy.url, "-H", "X-Token: {env.TOKEN}", "-q",
            env={"TOKEN": "tok-123"},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    body = (workdir / "out" / manifest(workdir / "out")[0]["path"]).read_text()
    assert body == f"ok {target} tok-123"


def test_a_url_that_names_no_host_is_refused_before_anything_is_sent(workdir: Path) -> None:
    job = url_job(workdir, ["http://example.com/a", "http://./x"])
    result = run_fetch("run", job, "-o", "out", "--dry-run")
    assert result.exit_code == 2
    assert result.output.endswith("job.csv:3: the URL 'http://./x' has no host\n")
