"""Crawl mode's rules: its settings, URL normalisation and scope.

Pure functions and small classes with no I/O; links are taken out of pages and sitemaps
by ``links.py``, the frontier (``frontier.py``) keeps what was found, robots.txt lives in
``robots.py``, and ``crawler.py`` joins them. The settings are read for every run, so
this module imports nothing heavy: a run that crawls nothing never imports the others.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from fetcher.hosts import host_name, origin

__all__ = [
    "CRAWL_KEYS",
    "CRAWL_OPTIONS",
    "DEFAULT_FOLLOW",
    "LINK_ATTRS",
    "CrawlSettings",
    "FetchFile",
    "in_scope",
    "normalize_url",
    "registrable_domain",
]

DEFAULT_FOLLOW = ("a", "link", "area", "iframe")
SCOPES = ("host", "domain", "any")
# The keys of a job's [crawl] table: the crawl options of ``fetch run`` (the same names)
# but ignore_robots, which only the flag sets (the table has never taken it).
CRAWL_KEYS = (
    "depth",
    "scope",
    "include",
    "exclude",
    "max_pages",
    "follow",
    "sitemaps",
    "strip_query",
)
CRAWL_OPTIONS = (*CRAWL_KEYS, "ignore_robots")  # the crawl options of ``fetch run``
LINK_ATTRS = {  # the elements whose links a crawl can follow, and the attribute holding it
    "a": "href",
    "area": "href",
    "link": "href",
    "iframe": "src",
    "frame": "src",
    "img": "src",
    "script": "src",
    "embed": "src",
    "source": "src",
    "video": "src",
    "audio": "src",
}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
# A few public suffixes of two labels, so example.co.uk's domain is not co.uk. Without the
# full Public Suffix List (a dependency) this is an approximation; it errs towards a
# narrower scope, never a wider one for these.
_TWO_LABEL_SUFFIXES = frozenset(
    {
        "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "co.jp",
        "ne.jp", "or.jp", "ac.jp", "go.jp", "co.kr", "or.kr", "com.br", "net.br", "org.br",
        "com.cn", "net.cn", "org.cn", "gov.cn", "com.tw", "org.tw", "co.in", "net.in",
        "org.in", "co.za", "org.za", "com.mx", "com.ar", "com.tr", "com.sg", "com.hk",
        "co.il", "co.id", "com.my", "com.ph", "com.vn", "com.pl", "com.ua", "co.th",
        "github.io", "gitlab.io", "herokuapp.com", "appspot.com", "blogspot.com",
        "pages.dev", "netlify.app", "vercel.app", "cloudfront.net", "azurewebsites.net",
    }
)  # fmt: skip


class FetchFile(Protocol):
    """How a crawl fetches a file that is not a page (robots.txt, a sitemap): the
    runner sends it on the one request path of its rows."""

    async def __call__(self, url: str, *, seed: str, max_bytes: int) -> tuple[int, bytes]:
        """``(status, at most max_bytes of the body)``, or ``(0, b"")`` when no response
        came; ``seed`` is the URL of the row it is fetched for (secrets go only to the
        origin of a row)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CrawlSettings:
    """The ``[crawl]`` table, checked.

    Args:
        depth: hops followed from a seed; 0 fetches only the rows.
        scope: ``host``, ``domain`` or ``any``.
        include: a URL must match one of these (when any are given).
        exclude: a URL must match none of these.
        max_pages: a hard cap on pages requested in the run.
        follow: the elements whose links are taken.
        sitemaps: read sitemap.xml (and those named in robots.txt) as seeds.
        strip_query: query parameter names (glob patterns) dropped from found URLs.
        ignore_robots: do not fetch or obey robots.txt.
    """

    depth: int = 0
    scope: str = "host"
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()
    max_pages: int | None = None
    follow: tuple[str, ...] = DEFAULT_FOLLOW
    sitemaps: bool = False
    strip_query: tuple[str, ...] = ()
    ignore_robots: bool = False
    nofollow: bool = True  # honour rel=nofollow and <meta name=robots content=nofollow>
    _follow_set: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_follow_set", frozenset(self.follow))

    @classmethod
    def parse(cls, table: Mapping[str, Any]) -> CrawlSettings:
        """Check a ``[crawl]`` table (merged with flags); raise ``ValueError`` naming the key."""
        values: dict[str, Any] = {}
        for key, value in table.items():
            if value is None:
                continue
            values[key] = _check(key, value)
        return cls(**values)

    def allows(self, url: str) -> bool:
        """True when ``url`` passes the include and exclude patterns."""
        if self.include and not any(p.search(url) for p in self.include):
            return False
        return not any(p.search(url) for p in self.exclude)

    @property
    def follow_set(self) -> frozenset[str]:
        return self._follow_set


def _check(key: str, value: Any) -> Any:
    if key in ("depth", "max_pages"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"crawl.{key} must be a whole number >= 0, not {value!r}")
        if key == "max_pages" and value == 0:
            raise ValueError("crawl.max_pages must be at least 1")
        return value
    if key == "scope":
        if value not in SCOPES:
            raise ValueError(f"crawl.scope must be one of {', '.join(SCOPES)}, not {value!r}")
        return value
    if key in ("include", "exclude"):
        patterns = [value] if isinstance(value, str) else value
        if not isinstance(patterns, list | tuple) or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"crawl.{key} must be a list of regular expressions")
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                message = f"crawl.{key}: bad regular expression {pattern!r}: {exc}"
                raise ValueError(message) from None
        return tuple(compiled)
    if key in ("follow", "strip_query"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"crawl.{key} must be a list of strings")
        if key == "follow":
            unknown = sorted(set(items) - set(LINK_ATTRS))
            if unknown:
                raise ValueError(
                    f"crawl.follow: unknown element {unknown[0]!r} "
                    f"(choose from {', '.join(sorted(LINK_ATTRS))})"
                )
            return tuple(i.lower() for i in items)
        return tuple(items)
    if key in ("sitemaps", "ignore_robots", "nofollow"):
        if not isinstance(value, bool):
            raise ValueError(f"crawl.{key} must be true or false")
        return value
    raise ValueError(f"unknown crawl setting {key!r}")


# --------------------------------------------------------------------------- URLs


def _normalize_percent(text: str, safe: str) -> str:
    """Upper-case percent escapes and decode the ones of unreserved characters."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else f"%{match.group(1).upper()}"

    text = _PERCENT.sub(fix, text)
    # Escape what must not appear raw (spaces, non-ASCII), keeping existing escapes.
    return quote(text, safe=safe + "%")


def normalize_url(url: str, *, strip_query: Sequence[str] = ()) -> str | None:
    """The canonical form of an absolute http(s) URL, or None for anything else.

    Scheme and host are lower-cased, the default port and the fragment dropped, percent
    escapes normalised, an empty path made ``/``, and query parameters whose names match a
    ``strip_query`` glob removed.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    found = origin(url) if scheme in ("http", "https") else None  # the one host parser
    if found is None:
        return None
    netloc = found.netloc
    path = _normalize_percent(parts.path or "/", safe="/:@!$&'()*+,;=")
    query = parts.query
    if query and strip_query:
        kept = [
            pair
            for pair in query.split("&")
            if not any(fnmatch.fnmatchcase(unquote(pair.split("=", 1)[0]), p) for p in strip_query)
        ]
        query = "&".join(kept)
    if query:
        query = _normalize_percent(query, safe="/:@!$&'()*+,;=?")
    return urlunsplit((scheme, netloc, path, query, ""))


def registrable_domain(host: str) -> str:
    """The registrable domain of ``host`` (``www.example.co.uk`` -> ``example.co.uk``).

    IP addresses and single-label hosts are their own domain.
    """
    host = host_name(host)
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.split(".")
    if len(labels) <= 2:
        return host
    if ".".join(labels[-2:]) in _TWO_LABEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def in_scope(url: str, seed: str, scope: str) -> bool:
    """True when ``url`` is within ``scope`` of the ``seed`` URL (its host, ``hosts.origin``'s,
    or its registrable domain; a URL that names no host is in no scope but ``any``)."""
    if scope == "any":
        return True
    found, seed_origin = origin(url), origin(seed)
    if found is None or seed_origin is None:
        return False
    if scope == "host":
        return found.host == seed_origin.host
    return registrable_domain(found.host) == registrable_domain(seed_origin.host)
