"""Links out of a crawled page, and page URLs out of a sitemap.

Only a crawl imports this module (the HTML and XML parsers it needs cost a run that
crawls nothing about 10 ms to import).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

from fetcher.crawl import DEFAULT_FOLLOW, LINK_ATTRS

__all__ = ["MAX_SITEMAP_BYTES", "extract_links", "is_html", "parse_sitemap"]

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
            data = handle.read(MAX_PARSE_BYTES)
    else:
        data = source[:MAX_PARSE_BYTES]
    follow_set = frozenset(follow)
    if (parser or PARSER) == "lexbor":
        links, base, meta_nofollow = _lexbor_links(data, follow_set, nofollow)
    else:
        html = _LinkParser(follow_set, nofollow)
        html.feed(data.decode("utf-8", "replace"))
        html.close()
        links, base, meta_nofollow = html.links, html.base, html.meta_nofollow
    if nofollow and meta_nofollow:
        return []
    root = urljoin(page_url, base) if base else page_url
    resolved = []
    for link in links:
        if link.lower().startswith(("javascript:", "mailto:", "data:", "tel:", "#")):
            continue
        try:
            resolved.append(urljoin(root, link))
        except ValueError:
            continue
    return resolved


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
