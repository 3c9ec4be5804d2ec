"""Links out of a crawled page, and page URLs out of a sitemap.

Pages are parsed by lexbor (selectolax), a required dependency: it finds a 10 KB page's
links about 6x faster than the standard library's html.parser (figures at ``_links_of``).
Only a crawl imports this module (the HTML and XML parsers it needs cost a run that
crawls nothing about 10 ms to import).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

from fetcher.crawl import DEFAULT_FOLLOW, LINK_ATTRS, CrawlSettings, in_scope, normalize_url

__all__ = [
    "MAX_SITEMAP_BYTES",
    "LinkSieve",
    "extract_links",
    "is_html",
    "page_links",
    "parse_sitemap",
    "read_html",
]

MAX_PARSE_BYTES = 8 * 1024 * 1024  # only the first 8 MiB of a page are searched for links
MAX_SITEMAP_BYTES = 50 * 1024 * 1024  # the sitemap protocol's own limit, decoded
_SNIFF = 1024  # the first bytes that tell an HTML page without a Content-Type


def _media_is_html(content_type: str | None) -> bool | None:
    """True or False when ``Content-Type`` tells whether a response is HTML, None when
    the first bytes must tell (no type, ``application/octet-stream``, ``text/plain``)."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media in ("text/html", "application/xhtml+xml"):
            return True
        if media and media not in ("application/octet-stream", "text/plain"):
            return False
    return None


def _sniff_html(head: bytes) -> bool:
    sniff = head[:_SNIFF].lstrip().lower()
    return sniff.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def is_html(content_type: str | None, head: bytes) -> bool:
    """True for an HTML response: by ``Content-Type``, else by sniffing its first bytes."""
    media = _media_is_html(content_type)
    return _sniff_html(head) if media is None else media


def read_html(path: Path, content_type: str | None, size: int | None) -> bytes | None:
    """The first 8 MiB of a stored page of ``size`` bytes (None: not known) when it is
    HTML (``is_html``), else None; raise ``OSError`` when it cannot be read.

    Read in buffers of the page's size: ``open().read(8 MiB)`` takes a buffer of 8 MiB
    for a page of 10 KB, 60 us a page on W5 where this takes 8.
    """
    media = _media_is_html(content_type)
    if media is False:
        return None
    limit = MAX_PARSE_BYTES if size is None else min(size, MAX_PARSE_BYTES)
    fd = os.open(path, os.O_RDONLY)
    try:
        if media:
            return _read(fd, limit)
        head = _read(fd, min(limit, _SNIFF))
        return head + _read(fd, limit - len(head)) if _sniff_html(head) else None
    finally:
        os.close(fd)


def _read(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``fd``, in reads of at most 1 MiB."""
    chunks = []
    while limit > 0:
        chunk = os.read(fd, min(limit, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def _links_of(
    data: bytes, follow: frozenset[str], nofollow: bool, *, walk: bool = False
) -> tuple[list[str], str | None, bool]:
    """The links of the page's ``follow`` elements in document order, its first
    ``<base href>``, and whether a ``<meta name=robots>`` says nofollow.

    lexbor finds the elements of one name (``tags``) for about 1 us; walking the whole
    tree in Python costs some 20 us on a 10 KB page. So when the page holds elements of
    one of the ``follow`` names only (every link an ``<a>``, say), that list is the
    links in document order; when it holds several (``<link>`` and ``<a>``), or with
    ``walk``, the tree is walked to keep their order. On W5's pages (31 links): 45 us
    beside the parse's 55, where the walk took 75. (CSS selectors would say the same,
    but the first query on a page builds a selector engine: 120 us more.)
    """
    parser = LexborHTMLParser(data)
    base: str | None = None
    for node in parser.tags("base"):
        href = node.attrs.get("href")
        if href is not None:
            base = href.strip() or None
            break
    meta_nofollow = any(
        (attrs.get("name") or "").lower() == "robots"
        and "nofollow" in (attrs.get("content") or "").lower()
        for attrs in (node.attrs for node in parser.tags("meta"))
    )
    kinds = {tag: nodes for tag in follow if (nodes := parser.tags(tag))}
    if len(kinds) > 1 or (walk and kinds):
        root = parser.root
        nodes = [node for node in root.traverse() if node.tag in kinds] if root else []
    else:
        nodes = next(iter(kinds.values()), [])
    links = []
    for node in nodes:
        attrs = node.attrs
        if nofollow:
            rel = attrs.get("rel")
            if rel and "nofollow" in rel.lower().split():
                continue
        link = attrs.get(LINK_ATTRS[node.tag or ""])  # a tag of ``kinds``
        if link:
            links.append(link.strip())
    return links, base, meta_nofollow


_NOWHERE = re.compile(r"(?i:javascript:|mailto:|data:|tel:|#)").match  # links to no page


def page_links(
    data: bytes,
    *,
    follow: frozenset[str] = frozenset(DEFAULT_FOLLOW),
    nofollow: bool = True,
) -> tuple[list[str], str | None]:
    """A page's links as written (stripped, in document order, without those that lead
    to no page: ``javascript:``, ``mailto:``, ``data:``, ``tel:``, a bare ``#fragment``)
    and its ``<base href>``; no links at all under ``<meta name=robots content=nofollow>``
    (with ``nofollow``). Only the first 8 MiB of ``data`` are read."""
    links, base, meta_nofollow = _links_of(data[:MAX_PARSE_BYTES], follow, nofollow)
    if nofollow and meta_nofollow:
        return [], base
    return [link for link in links if not _NOWHERE(link)], base


def extract_links(
    source: Path | bytes,
    page_url: str,
    *,
    follow: Iterable[str] = DEFAULT_FOLLOW,
    nofollow: bool = True,
) -> list[str]:
    """The absolute URLs a page links to, in document order, resolved against its
    ``<base href>`` when present (not yet normalised or de-duplicated).

    ``source`` is the stored body or its bytes; only its first 8 MiB are read.
    """
    if isinstance(source, Path):
        with source.open("rb") as handle:
            source = handle.read(MAX_PARSE_BYTES)
    links, base = page_links(source, follow=frozenset(follow), nofollow=nofollow)
    root = urljoin(page_url, base) if base else page_url
    resolved = []
    for link in links:
        try:
            resolved.append(urljoin(root, link))
        except ValueError:
            continue
    return resolved


# --------------------------------------------------------------------------- new links

# What ``urljoin(root, link)`` depends on besides ``link`` (RFC 3986 5.2.2):
# - an absolute path (not ``//``), or an http(s) URL with a host or a path: the page's
#   scheme and host only (``_ORIGIN_ONLY``);
# - a relative path (no scheme, not empty, not a bare ``?query`` or ``#fragment``): the
#   page's scheme, host and directory, its path up to the last ``/`` (``_DIRECTORY_ONLY``);
#   so on a site whose pages link to their siblings, a link met on one page of a folder is
#   known on all of them;
# - anything else: the page's URL.
# urlsplit drops tabs and newlines anywhere, which can turn ``/<tab>/`` into ``//`` or
# ``<tab>?q`` into ``?q``, and C0 controls and spaces in front: a link holding one is
# resolved against its page. A colon before the first ``/``, ``?`` or ``#`` may end a scheme;
# a link of a bare ``;`` (no path, no parameters) is resolved as an empty one.
_ORIGIN_ONLY = re.compile(r"(?:/(?!/)|(?i:https?)://[^?#\t\n\r])[^\t\n\r]*")
_DIRECTORY_ONLY = re.compile(r"[^/?#:;\x00-\x20][^/?#:\t\n\r]*(?:[/?#][^\t\n\r]*)?")


def _contexts(root: str) -> tuple[str, str] | None:
    """The contexts of the links of a page whose URL (or base) is ``root``: its
    ``scheme://netloc`` and that with its directory (urljoin splits parameters, ``;...``,
    off the last segment only), or None for a root that is no URL."""
    try:
        parts = urlsplit(root)
    except ValueError:
        return None
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin, origin + parts.path[: parts.path.rfind("/") + 1]


class LinkSieve:
    """The URLs a crawl has not met yet among a page's links.

    A page's links are mostly known: on W5 (10,000 pages of 31 links) 310,000 links name
    10,000 distinct URLs. Each distinct link is resolved, normalised and checked against
    the scope and the include/exclude patterns once (urljoin, normalize_url and in_scope
    take some 20 us a link); then it is remembered, kept or not, and skipped in well under
    a microsecond when it comes again. A link is remembered by ``(seed, context, link)``,
    the context being what resolving it depends on (``_ORIGIN_ONLY``), and a kept URL
    by itself, so two links to one URL give it once.

    The memory is bounded: two generations of at most ``size`` keys each (a key met in
    the older one moves to the newer; when the newer is full, the older is dropped), some
    200 bytes a key: at most 2 x 50,000 keys, about 20 MB. A forgotten link is resolved
    again, and the frontier ignores a URL it holds.

    Args:
        settings: the crawl's scope, patterns and query parameters to strip.
        size: the keys of one generation.
    """

    def __init__(self, settings: CrawlSettings, *, size: int = 50_000) -> None:
        self.settings, self.size = settings, size
        # the newer generation: the links met by (seed, kind of context, context), the
        # URLs given...
        self._links: dict[tuple[str, int, str], set[str]] = {}
        self._urls: set[str] = set()
        self._count = 0  # ...and how many keys it holds; then the older one
        self._old_links: dict[tuple[str, int, str], set[str]] = {}
        self._old_urls: set[str] = set()
        self._old_count = 0

    def _grow(self) -> None:
        """Make room for one key in the newer generation."""
        if self._count >= self.size:
            self._old_links, self._old_urls = self._links, self._urls
            self._old_count, self._links, self._urls, self._count = self._count, {}, set(), 0
        self._count += 1

    def _known_link(self, group: tuple[str, int, str], link: str) -> bool:
        """Remember ``link`` of ``group``; True when it was remembered already."""
        links = self._links.get(group)
        if links is not None and link in links:
            return True
        old = self._old_links.get(group)
        known = old is not None and link in old
        self._grow()
        self._links.setdefault(group, set()).add(link)
        return known

    def _known_url(self, url: str) -> bool:
        """Remember a URL given; True when it was remembered already."""
        if url in self._urls:
            return True
        known = url in self._old_urls
        self._grow()
        self._urls.add(url)
        return known

    def __len__(self) -> int:
        """How many keys the sieve remembers (at most twice its ``size``)."""
        return self._count + self._old_count

    def new_urls(self, links: Iterable[str], root: str, seed: str) -> list[str]:
        """The normalised URLs among ``links`` (resolved against ``root``, the page's URL
        or base) in the scope of the ``seed`` URL that pass the patterns and were not
        returned before (as far as the sieve remembers).

        The kind of a link's context is a function of the link (``_ORIGIN_ONLY``), so a
        link found among those met in any of this page's three contexts (of its kind) is
        known without working out which is its own: three set lookups, 0.1 us a link.
        """
        contexts = _contexts(root)
        if contexts is None:
            return []
        origin, directory = contexts
        settings, met, none = self.settings, self._links, frozenset[str]()
        by_origin = met.get((seed, 0, origin), none)
        by_directory = met.get((seed, 1, directory), none)
        by_root = met.get((seed, 2, root), none)
        origin_only, directory_only = _ORIGIN_ONLY.fullmatch, _DIRECTORY_ONLY.fullmatch
        found = []
        for link in links:
            if link in by_directory or link in by_origin or link in by_root:
                continue
            if origin_only(link):
                group = (seed, 0, origin)
            else:
                group = (seed, 1, directory) if directory_only(link) else (seed, 2, root)
            if self._known_link(group, link):
                continue
            try:
                url = normalize_url(urljoin(root, link), strip_query=settings.strip_query)
            except ValueError:
                continue
            if (
                url is not None
                and in_scope(url, seed, settings.scope)
                and settings.allows(url)
                and not self._known_url(url)
            ):
                found.append(url)
        return found


# --------------------------------------------------------------------------- sitemaps


def parse_sitemap(data: bytes) -> tuple[list[str], list[str]]:
    """Read a sitemap or sitemap index (gzip allowed); return ``(pages, sitemaps)``."""
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
                data = unzipped.read(MAX_SITEMAP_BYTES)
        except (OSError, EOFError):
            return [], []
    pages: list[str] = []
    sitemaps: list[str] = []
    try:
        for _, element in ET.iterparse(io.BytesIO(data), events=("end",)):
            tag = element.tag.rsplit("}", 1)[-1]
            if tag == "loc" and element.text:
                pages.append(element.text.strip())
            elif tag == "sitemap" and pages:
                # the <loc> just read belonged to a <sitemap> of an index
                sitemaps.append(pages.pop())
            element.clear()
    except ET.ParseError:
        pass
    return pages, sitemaps
