"""Crawl mode's pure parts: normalisation, scope, link extraction, sitemaps, frontier."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher.crawl import CrawlSettings, in_scope, normalize_url, registrable_domain
from fetcher.frontier import DONE, PENDING, Entry, Frontier
from fetcher.links import (
    LinkSieve,
    _links_of,
    extract_links,
    is_html,
    page_links,
    parse_sitemap,
    read_html,
)
from fetcher.robots import RobotsCache


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.COM/a", "http://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com/a#frag", "http://example.com/a"),
        ("http://example.com/%7euser/%2fx", "http://example.com/~user/%2Fx"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://example.com/?b=1&a=2", "http://example.com/?b=1&a=2"),
        ("http://127.0.0.1:8080/x?", "http://127.0.0.1:8080/x"),
        # the host as aiohttp connects to it (fetcher.hosts): IDNA 2008, where Python's
        # own codec (IDNA 2003) maps faß.de to another host, fass.de
        ("http://faß.de/", "http://xn--fa-hia.de/"),
        ("http://BÜCHER.de./", "http://xn--bcher-kva.de/"),
        ("http://[0:0::1]:8080/x", "http://[::1]:8080/x"),
        ("http://example.com.:080/", "http://example.com/"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "mailto:a@b.c", "javascript:alert(1)", "/relative", "http://", "x"],
)
def test_normalize_rejects_what_is_not_http(url: str) -> None:
    assert normalize_url(url) is None


def test_strip_query_removes_matching_parameters_only() -> None:
    url = "http://example.com/p?utm_source=x&id=3&sessionid=abc&utm_medium=y"
    assert normalize_url(url, strip_query=["utm_*", "sessionid"]) == "http://example.com/p?id=3"
    assert normalize_url("http://e.com/?utm_a=1", strip_query=["utm_*"]) == "http://e.com/"


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_normalize_is_idempotent(tail: str) -> None:
    first = normalize_url("http://Example.com/" + tail)
    if first is not None:
        assert normalize_url(first) == first


def test_registrable_domain() -> None:
    assert registrable_domain("www.example.com") == "example.com"
    assert registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert registrable_domain("127.0.0.1") == "127.0.0.1"
    assert registrable_domain("localhost") == "localhost"


def test_scope() -> None:
    seed = "http://www.example.com/"
    assert in_scope("http://www.example.com/x", seed, "host")
    assert not in_scope("http://cdn.example.com/x", seed, "host")
    assert in_scope("http://cdn.example.com/x", seed, "domain")
    assert not in_scope("http://example.org/x", seed, "domain")
    assert in_scope("http://example.org/x", seed, "any")
    assert not in_scope("http://localhost:1/x", "http://127.0.0.1:1/", "host")


def test_is_html() -> None:
    assert is_html("text/html; charset=utf-8", b"")
    assert is_html("application/xhtml+xml", b"")
    assert not is_html("application/json", b"<html>")
    assert is_html(None, b"  <!DOCTYPE html><html>")
    assert is_html("application/octet-stream", b"<html><body>")
    assert not is_html(None, b"%PDF-1.4")


def test_read_html_reads_a_stored_page_when_it_is_html(tmp_path: Path) -> None:
    page = tmp_path / "p"
    body = b"<!doctype html>" + b"x" * 3000
    page.write_bytes(body)
    assert read_html(page, "text/html", len(body)) == body
    assert read_html(page, "text/html", None) == body  # no size: to the end
    assert read_html(page, "text/html", 100) == body[:100]  # the size the store recorded
    assert read_html(page, None, len(body)) == body  # sniffed
    assert read_html(page, "text/plain", None) == body
    assert read_html(page, "application/pdf", len(body)) is None
    page.write_bytes(b"%PDF-1.4" + b"x" * 3000)
    assert read_html(page, None, None) is None
    assert read_html(page, "text/html", None) is not None  # the type is believed
    with pytest.raises(FileNotFoundError):
        read_html(tmp_path / "gone", "text/html", 10)
    assert read_html(tmp_path / "gone", "image/png", 10) is None  # not even opened


PAGE = b"""<!doctype html><html><head>
<base href="/docs/">
<link rel="stylesheet" href="style.css">
<meta charset="utf-8">
</head><body>
<a href="page1.html">one</a>
<a href="/abs.html#section">abs</a>
<a href="http://other.example/x">other host</a>
<a href="page2.html" rel="nofollow">skip me</a>
<a href="#top">fragment only</a>
<a href="javascript:void(0)">js</a>
<a href="mailto:x@example.com">mail</a>
<A HREF="UPPER.html">upper</A>
<map><area href="area.html"></map>
<iframe src="frame.html"></iframe>
<img src="pic.png"><script src="app.js"></script>
<a>no href</a>
</body></html>"""


def test_extract_links_resolves_against_base_and_skips_nofollow() -> None:
    links = extract_links(PAGE, "http://site.example/start/index.html")
    assert links == [
        "http://site.example/docs/style.css",
        "http://site.example/docs/page1.html",
        "http://site.example/abs.html#section",
        "http://other.example/x",
        "http://site.example/docs/UPPER.html",
        "http://site.example/docs/area.html",
        "http://site.example/docs/frame.html",
    ]


def test_follow_list_replaces_the_default() -> None:
    links = extract_links(PAGE, "http://s.example/", follow=["img", "script"])
    assert links == ["http://s.example/docs/pic.png", "http://s.example/docs/app.js"]


def test_meta_robots_nofollow_drops_every_link(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_bytes(b'<meta name="robots" content="noindex, nofollow"><a href="/x">x</a>')
    assert extract_links(page, "http://s.example/") == []
    assert extract_links(page, "http://s.example/", nofollow=False) == ["http://s.example/x"]


@given(data=st.binary(max_size=2000))
@settings(max_examples=100, deadline=None)
def test_extract_links_never_raises_on_garbage(data: bytes) -> None:
    for link in extract_links(data, "http://s.example/a/"):
        assert isinstance(link, str)


_SOUP = st.lists(
    st.sampled_from(
        ['<a href="a1">', '<A HREF=a2 rel=nofollow>', "</a>", '<link href="l1">', "<head>",
         "<body>", '<area href="r1">', '<iframe src="i1">', "</iframe>", "<!--", "-->",
         "<script>", "</script>", "<template>", "</template>", "<svg>", "</svg>",
         '<base href="/b/">', '<meta name=robots content=nofollow>', "<noscript>",
         "<title>", "</title>", '<img src="m1">', "text", "<p>", "<table>", "<a href=' a3 '>"]
    ),
    max_size=12,
).map("".join)  # fmt: skip


@given(page=_SOUP, follow=st.sets(st.sampled_from(["a", "link", "area", "iframe", "img"])))
@settings(max_examples=300, deadline=None)
def test_links_found_by_name_are_those_of_the_walk_in_document_order(
    page: str, follow: set[str]
) -> None:
    data = page.encode()
    for nofollow in (True, False):
        assert _links_of(data, frozenset(follow), nofollow) == _links_of(
            data, frozenset(follow), nofollow, walk=True
        )


def test_the_first_base_with_an_href_counts() -> None:
    page = b'<base target=_top><base href=" /a/ "><base href="/b/"><a href="x">x</a>'
    assert page_links(page) == (["x"], "/a/")
    assert extract_links(page, "http://s.example/p") == ["http://s.example/a/x"]


# Pages of one site whose links resolve alike only when the sieve says so: the same link
# on pages of other paths, queries, schemes and hosts, and pages of one directory (the
# sieve knows their relative links as one), parameters (``;``) in their paths included.
_ROOTS = st.sampled_from(
    [
        "http://s.example/",
        "http://s.example",
        "http://s.example/a/b.html?q=1",
        "http://s.example/a/c.html",
        "http://s.example/a/",
        "http://s.example/a/;x",
        "http://s.example/a;p/b;q",
        "http://s.example/a;p/c",
        "http://s.example:8080/a/",
        "https://s.example/c/d",
        "http://other.example/e/",
    ]
)
_LINKS = st.lists(
    st.sampled_from(
        ["/", "//", "http://", "HTTPS://", "http:", "s.example", "other.example", ":8080",
         "a", "..", ".", "?", "q=1", "#", ";", ":", "\t", "%41", "x.html", "[", "utm_x=1", "&",
         "\x01", " "]
    ),
    max_size=6,
).map("".join)  # fmt: skip


def _resolved(pages: list[tuple[str, list[str]]], crawl: CrawlSettings, seed: str) -> set[str]:
    """Each link resolved, normalised and checked, as the sieve must give them."""
    found = set()
    for root, links in pages:
        for link in links:
            try:
                url = normalize_url(urljoin(root, link), strip_query=crawl.strip_query)
            except ValueError:
                continue
            if url is not None and in_scope(url, seed, crawl.scope) and crawl.allows(url):
                found.add(url)
    return found


@given(roots=st.lists(_ROOTS, min_size=1, max_size=6), links=st.lists(_LINKS, max_size=12))
@settings(max_examples=300, deadline=None)
def test_the_sieve_gives_each_url_the_links_lead_to_once(
    roots: list[str], links: list[str]
) -> None:
    pages = [(root, links) for root in roots]  # the same links on pages that differ
    crawl = CrawlSettings(scope="domain", exclude=(re.compile("e/x"),), strip_query=("utm_*",))
    seed = "http://s.example/"
    sieve = LinkSieve(crawl)
    given_urls = [url for root, links in pages for url in sieve.new_urls(links, root, seed)]
    assert len(given_urls) == len(set(given_urls))
    assert set(given_urls) == _resolved(pages, crawl, seed)
    # a sieve that forgets (two keys a generation) may give a URL again, but misses none
    small = LinkSieve(crawl, size=2)
    again = [url for root, links in pages for url in small.new_urls(links, root, seed)]
    assert set(again) == set(given_urls)


def test_the_sieve_remembers_a_bounded_number_of_links() -> None:
    sieve = LinkSieve(CrawlSettings(scope="any"), size=100)
    for page in range(50):
        links = [f"/p/{page}/{i}" for i in range(30)]
        assert len(sieve.new_urls(links, f"http://s.example/p/{page}", "http://s.example/")) == 30
        assert sieve.new_urls(links, "http://s.example/", "http://s.example/") == []
    assert len(sieve) <= 2 * 100


def test_sitemap_and_index_and_gzip() -> None:
    urlset = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>http://s.example/a</loc><lastmod>2020-01-01</lastmod></url>
  <url><loc> http://s.example/b </loc></url>
</urlset>"""
    assert parse_sitemap(urlset) == (["http://s.example/a", "http://s.example/b"], [])
    index = b"""<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <sitemap><loc>http://s.example/sm1.xml</loc></sitemap>
  <sitemap><loc>http://s.example/sm2.xml.gz</loc></sitemap>
</sitemapindex>"""
    assert parse_sitemap(index) == (
        [],
        ["http://s.example/sm1.xml", "http://s.example/sm2.xml.gz"],
    )
    assert parse_sitemap(gzip.compress(urlset))[0] == ["http://s.example/a", "http://s.example/b"]
    assert parse_sitemap(b"<not xml") == ([], [])
    assert parse_sitemap(b"\x1f\x8bnot gzip") == ([], [])


def test_crawl_settings_check_their_values() -> None:
    settings_ = CrawlSettings.parse(
        {"depth": 2, "scope": "domain", "include": ["/docs/"], "exclude": r"\.pdf$"}
    )
    assert settings_.depth == 2
    assert settings_.allows("http://s/docs/a")
    assert not settings_.allows("http://s/docs/a.pdf")
    assert not settings_.allows("http://s/blog/a")
    for bad in (
        {"depth": -1},
        {"depth": "2"},
        {"scope": "planet"},
        {"include": ["("]},
        {"follow": ["blink"]},
        {"max_pages": 0},
        {"sitemaps": "yes"},
    ):
        with pytest.raises(ValueError, match="crawl"):
            CrawlSettings.parse(bad)


def test_frontier_adds_each_url_once_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "frontier.sqlite"
    frontier = Frontier(path, resume=False)
    assert frontier.add([Entry("http://s/a", 0, None, 2), Entry("http://s/b", 0, None, 3)]) == 2
    assert frontier.add([Entry("http://s/a", 1, "http://s/b", 3)]) == 0
    taken = frontier.take(1)
    assert [e.url for e in taken] == ["http://s/a"]
    frontier.finish(["http://s/a"], [Entry("http://s/c", 1, "http://s/a", 2)])
    assert frontier.count(DONE) == 1
    frontier.take(10)  # b and c taken, then a crash
    frontier.close()

    resumed = Frontier(path, resume=True)
    assert resumed.resumed
    assert resumed.count(PENDING) == 2
    assert resumed.lowest_pending() == 0
    assert [e.url for e in resumed.take(10)] == ["http://s/b"], "one level at a time"
    assert [e.url for e in resumed.take(10)] == ["http://s/c"]
    assert resumed.take(10) == []
    resumed.close()

    fresh = Frontier(path, resume=False)
    assert fresh.count() == 0
    fresh.close()


def test_crawl_delay_groups_and_fractions() -> None:
    from fetcher.robots import _crawl_delays, _Rules

    lines = [
        "User-agent: BadBot",
        "Crawl-delay: 30",
        "",
        "User-agent: fetcher",
        "User-agent: other",
        "Disallow: /x",
        "Crawl-delay: 0.5  # half a second",
        "",
        "User-agent: *",
        "Crawl-delay: nonsense",
        "Crawl-delay: 2",
    ]
    delays = _crawl_delays(lines)
    assert delays == {"badbot": 30.0, "fetcher": 0.5, "other": 0.5, "*": 2.0}
    rules = _Rules(None, allow_all=True, delays=delays)
    assert rules.delay("fetcher/0.1.0") == 0.5
    assert rules.delay("curl/8") == 2.0
    assert _Rules(None, allow_all=True).delay("x") is None


@given(
    lines=st.lists(
        st.sampled_from(
            ["User-agent: *", "User-agent: fetcher", "user-agent: other", "Disallow:",
             "Disallow: /p", "DISALLOW : /q/ # a comment", "Disallow: # nothing", "Allow: /",
             "Allow: /p/1", "Crawl-delay: 1", "Sitemap: http://s/sitemap.xml", "", "# Disallow: /"]
        ),
        max_size=8,
    )
)  # fmt: skip
def test_rules_that_disallow_nothing_answer_as_the_parser_does(lines: list[str]) -> None:
    from urllib.robotparser import RobotFileParser

    from fetcher.robots import _disallows, _Rules

    parser = RobotFileParser()
    parser.parse(lines)
    rules = _Rules(parser, allow_all=True, disallows=_disallows(lines))
    for url in ("http://s/", "http://s/p/1", "http://s/p/2", "http://s/q/x"):
        for agent in ("fetcher/0.1", "curl/8"):
            assert rules.allowed(agent, url) == parser.can_fetch(agent, url), (agent, url)


async def test_robots_txt_is_asked_for_once_for_every_spelling_of_a_host() -> None:
    asked: list[str] = []

    async def fetch(url: str, *, seed: str, max_bytes: int) -> tuple[int, bytes]:
        asked.append(url)
        return 200, b"User-agent: *\nDisallow: /private/\nCrawl-delay: 2\n"

    delays: list[tuple[str, float]] = []

    async def on_delay(origin: str, delay: float) -> None:
        delays.append((origin, delay))

    robots = RobotsCache(fetch, agent="fetch", on_delay=on_delay)
    for url in ("http://Example.COM/a", "http://example.com./b", "http://example.com:80/c"):
        assert await robots.allowed(url, seed=url)
    assert not await robots.allowed("http://EXAMPLE.com.:80/private/x", seed="http://example.com/")
    assert asked == ["http://example.com/robots.txt"]
    assert delays == [("http://example.com", 2.0)]
