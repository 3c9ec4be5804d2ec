"""W5, the crawl workload: a generated static site of N pages, as real sites link.

Every page is ``/w5/p/<i>.html``, 8-12 KB of HTML with 30 links: the same 10 navigation
links on every page (the home page and pages 1-9, by absolute path, the home link with a
fragment), links to its children ``10i+1 .. 10i+10`` (a tree: every page is at most
``depth_needed`` hops from the home page), and links to pages drawn at random (relative
names) to make up 30. So most links a crawler finds it has seen before, as on a real
site. ``/robots.txt`` allows everything. The pages are plain files (nginx serves them);
the same seed gives the same site.

``crawl_job`` writes fetch's job: the home page as the one seed, and a ``[crawl]`` table
deep enough to reach every page.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

__all__ = ["NAV", "crawl_job", "depth_needed", "generate_site", "page_url"]

PREFIX = "w5/p"
NAV = 10
"""Navigation links on every page: the home page and pages 1 .. NAV - 1."""
LINKS = 30
FILLER = (
    "The quick brown fox jumps over the lazy dog while the committee reviews the annual "
    "report on regional transport, housing and the price of bread in the old market. "
)


def depth_needed(pages: int) -> int:
    """Hops from the home page to the deepest page of the tree of ``pages`` pages."""
    depth, reached, level = 0, 1, 1
    while reached < pages:
        level *= 10
        reached += level
        depth += 1
    return depth


def page_url(base_url: str, i: int) -> str:
    return f"{base_url}/{PREFIX}/{i}.html"


def _links(i: int, pages: int, rng: random.Random) -> list[str]:
    nav = ["/w5/p/0.html#top", *(f"/{PREFIX}/{n}.html" for n in range(1, min(NAV, pages)))]
    children = [f"{c}.html" for c in range(10 * i + 1, min(10 * i + 11, pages))]
    others = [f"{rng.randrange(pages)}.html" for _ in range(LINKS - len(nav) - len(children))]
    return nav + children + others


def _page(i: int, pages: int, rng: random.Random) -> bytes:
    links = _links(i, pages, rng)
    nav = "".join(
        f'<li><a href="{href}">Section {n}</a></li>' for n, href in enumerate(links[:NAV])
    )
    items = "".join(
        f'<li><a href="{href}">Article {href.split(".")[0]}</a></li>' for href in links[NAV:]
    )
    head = (
        f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>Page {i}</title>"
        f"</head>\n<body><header><nav><ul>{nav}</ul></nav></header>\n<main><h1>Page {i}</h1>\n"
    )
    tail = (
        f"<h2>Related</h2><ul>{items}</ul></main>\n"
        f"<footer>Page {i} of {pages}</footer></body></html>\n"
    )
    room = rng.randint(8 * 1024, 12 * 1024) - len(head) - len(tail)
    paragraphs = []
    while room > 16:
        n = min(room - 8, 900)  # 8: "<p>" and "</p>\n"
        paragraphs.append(f"<p>{(FILLER * (n // len(FILLER) + 1))[:n]}</p>\n")
        room -= n + 8
    return (head + "".join(paragraphs) + tail).encode()


def generate_site(www: Path, base_url: str, pages: int) -> dict[str, tuple[int, str]]:
    """Write the site of ``pages`` pages under ``www/w5/p/`` and ``www/robots.txt``;
    return each page's URL with its size and sha256."""
    rng = random.Random(5)
    folder = www / PREFIX
    folder.mkdir(parents=True, exist_ok=True)
    (www / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    expected = {}
    for i in range(pages):
        data = _page(i, pages, rng)
        (folder / f"{i}.html").write_bytes(data)
        expected[page_url(base_url, i)] = (len(data), hashlib.sha256(data).hexdigest())
    return expected


def crawl_job(jobs: Path, base_url: str, depth: int) -> Path:
    """fetch's job for the crawl: the home page as seed, ``[crawl] depth``."""
    job = jobs / "w5.csv"
    job.write_text(f"url\n{page_url(base_url, 0)}\n")
    (jobs / "w5.toml").write_text(f"[crawl]\ndepth = {depth}\n")
    return job
