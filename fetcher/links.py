"""Links out of a crawled page, and page URLs out of a sitemap.

Only a crawl imports this module (the HTML and XML parsers it needs cost a run that
crawls nothing about 10 ms to import).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from fetcher.crawl import DEFAULT_FOLLOW, LINK_ATTRS, CrawlSettings, in_scope, normalize_url

__all__ = [
    "MAX_SITEMAP_BYTES",
    "LinkSieve",
    "extract_links",
    "is_html",
    "origin_context",
    "page_links",
    "parse_sitemap",
]

MAX_PARSE_BYTES = 8 * 1024 * 1024  # only the first 8 MiB of a page are searched for links
MAX_SITEMAP_BYTES = 50 * 1024 * 1024  # the sitemap protocol's own limit, decoded


def is_html(content_type: str | None, head: bytes) -> bool:
    """True for an HTML response: by ``Content-Type``, else by sniffing its first bytes."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media in ("text/html", "application/xhtml+xml"):
            return True
        if media and media not in ("application/octet-stream", "text/plain"):
            return False
    sniff = head[:1024].lstrip().lower()
    return sniff.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


class _LinkParser(HTMLParser):
    def __init__(self, follow: frozenset[str], nofollow: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.follow, self.honour_nofollow = follow, nofollow
        self.links: list[str] = []
        self.base: str | None = None
        self.meta_nofollow = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base" and self.base is None:
            href = dict(attrs).get("href")
            if href:
                self.base = href.strip()
            return
        if tag == "meta":
            values = dict(attrs)
            if (values.get("name") or "").lower() == "robots" and "nofollow" in (
                values.get("content") or ""
            ).lower():
                self.meta_nofollow = True
            return
        if tag not in self.follow:
            return
        values = dict(attrs)
        if self.honour_nofollow and "nofollow" in (values.get("rel") or "").lower().split():
            return
        link = values.get(LINK_ATTRS[tag])
        if link:
            self.links.append(link.strip())

    handle_startendtag = handle_starttag


def _lexbor_links(
    data: bytes, follow: frozenset[str], nofollow: bool
) -> tuple[list[str], str | None, bool]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(data)
    base = None
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        base = (base_node.attributes.get("href") or "").strip() or None
    meta_nofollow = False
    for meta in tree.css("meta[name]"):
        attributes = meta.attributes
        if (attributes.get("name") or "").lower() == "robots" and "nofollow" in (
            attributes.get("content") or ""
        ).lower():
            meta_nofollow = True
    selector = ", ".join(f"{tag}[{LINK_ATTRS[tag]}]" for tag in sorted(follow))
    links = []
    for node in tree.css(selector) if selector else []:
        attributes = node.attributes
        if nofollow and "nofollow" in (attributes.get("rel") or "").lower().split():
            continue
        link = attributes.get(LINK_ATTRS.get(node.tag or "", "href"))
        if link:
            links.append(link.strip())
    return links, base, meta_nofollow


# Looked up, not imported: a run that crawls nothing does not pay for the import.
PARSER = "lexbor" if importlib.util.find_spec("selectolax") else "html.parser"
_NOWHERE = ("javascript:", "mailto:", "data:", "tel:", "#")  # links that lead to no page


def page_links(
    data: bytes,
    *,
    follow: frozenset[str] = frozenset(DEFAULT_FOLLOW),
    nofollow: bool = True,
    parser: str | None = None,
) -> tuple[list[str], str | None]:
    """A page's links as written (stripped, in document order, without those that lead
    to no page: ``javascript:``, ``mailto:``, ``data:``, ``tel:``, a bare ``#fragment``)
    and its ``<base href>``; no links at all under ``<meta name=robots content=nofollow>``
    (with ``nofollow``). Only the first 8 MiB of ``data`` are read."""
    data = data[:MAX_PARSE_BYTES]
    if (parser or PARSER) == "lexbor":
        links, base, meta_nofollow = _lexbor_links(data, follow, nofollow)
    else:
        html = _LinkParser(follow, nofollow)
        html.feed(data.decode("utf-8", "replace"))
        html.close()
        links, base, meta_nofollow = html.links, html.base, html.meta_nofollow
    if nofollow and meta_nofollow:
        return [], base
    return [link for link in links if not link.lower().startswith(_NOWHERE)], base


def extract_links(
    source: Path | bytes,
    page_url: str,
    *,
    follow: Iterable[str] = DEFAULT_FOLLOW,
    nofollow: bool = True,
    parser: str | None = None,
) -> list[str]:
    """The absolute URLs a page links to, in document order, resolved against its
    ``<base href>`` when present (not yet normalised or de-duplicated).

    ``source`` is the stored body or its bytes; only its first 8 MiB are read.
    """
    if isinstance(source, Path):
        with source.open("rb") as handle:
            source = handle.read(MAX_PARSE_BYTES)
    links, base = page_links(source, follow=frozenset(follow), nofollow=nofollow, parser=parser)
    root = urljoin(page_url, base) if base else page_url
    resolved = []
    for link in links:
        try:
            resolved.append(urljoin(root, link))
        except ValueError:
            continue
    return resolved


# --------------------------------------------------------------------------- new links

# A link whose resolution depends on its page's scheme and host only, not on the page's
# path or query: an absolute path (not ``//``), or an http(s) URL with a host or a path.
# urlsplit drops tabs and newlines anywhere, which can turn ``/<tab>/`` into ``//``: a
# link holding one is resolved against its page.
_ORIGIN_ONLY = re.compile(r"(?:/(?!/)|(?i:https?)://[^?#\t\n\r])[^\t\n\r]*")


def origin_context(link: str, root: str, origin: str) -> str:
    """What ``urljoin(root, link)`` depends on besides ``link``: ``origin`` (the root's
    ``scheme://netloc``) for an absolute link or path, else ``root`` itself."""
    return origin if _ORIGIN_ONLY.fullmatch(link) else root


class LinkSieve:
    """The URLs a crawl has not met yet among a page's links.

    A page's links are mostly known: on W5 (10,000 pages of 31 links) 310,000 links name
    10,000 distinct URLs. Each distinct link is resolved, normalised and checked against
    the scope and the include/exclude patterns once (urljoin, normalize_url and in_scope
    take some 20 us a link); then it is remembered, kept or not, and skipped in well under
    a microsecond when it comes again. A link is remembered by ``(seed, context, link)``,
    the context being what resolving it depends on (``origin_context``), and a kept URL
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
        self._new: set[object] = set()
        self._old: set[object] = set()

    def _known(self, key: object) -> bool:
        """Remember ``key``; True when it was remembered already."""
        if key in self._new:
            return True
        known = key in self._old
        if len(self._new) >= self.size:
            self._old, self._new = self._new, set()
        self._new.add(key)
        return known

    def new_urls(self, links: Iterable[str], *, root: str, seed: str) -> list[str]:
        """The normalised URLs among ``links`` (resolved against ``root``, the page's URL
        or base) in the scope of the ``seed`` URL that pass the patterns and were not
        returned before (as far as the sieve remembers)."""
        try:
            parts = urlsplit(root)
        except ValueError:
            return []
        origin = f"{parts.scheme}://{parts.netloc}"
        settings = self.settings
        found = []
        for link in links:
            if self._known((seed, origin_context(link, root, origin), link)):
                continue
            try:
                url = normalize_url(urljoin(root, link), strip_query=settings.strip_query)
            except ValueError:
                continue
            if (
                url is not None
                and in_scope(url, seed, settings.scope)
                and settings.allows(url)
                and not self._known(url)
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
