"""A crawl's recorded pages read back for their links: in a worker thread, and once the
crawl is long, in a process of its own.

lexbor parses a page without the interpreter lock, but finding its links (its nodes and
their attributes) holds it, and in a worker thread that is time the event loop waits.
So, as a long run's recorder does (``fetcher/child.py``), a crawl that has read
``PROCESS_AFTER`` pages in the thread starts a child, and sends it each batch of pages
recorded since (paths, not bodies); the child reads and parses them and answers their
links as written. The loop only pickles the paths and unpickles the links. On W5 (a
10,000-page crawl, tmpfs; ``python -m benchmarks.run --only W5 --repeat 5``, the code
before in the same invocation) fetch went from 1,344 to 1,583 pages/s, 0.20x to 0.24x
wget2, its CPU a page from 898 to 852 us.

The links are the same either way: a batch the child fails on (it ended, parsing
raised, or it gave no answer in time: it is killed) is read again in the thread, and so
is the rest of the crawl once it has ended.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import Sequence
from pathlib import Path

from fetcher.child import Child, ChildEnded, detach, serve, supported
from fetcher.links import page_links, read_html

__all__ = [
    "ANSWER_WITHIN",
    "PAGE_WITHIN",
    "PROCESS_AFTER",
    "Found",
    "LinkReader",
    "Page",
    "main",
    "page_links_of",
]

PROCESS_AFTER = 200  # pages a crawl reads in its thread before it starts the process
# How long the process may take to answer a batch, or to end, before it is killed and the
# crawl goes on in the thread: a page takes 75 us here, and at most 8 MiB is parsed.
ANSWER_WITHIN = 10.0  # seconds a batch, and
PAGE_WITHIN = 0.25  # seconds more for each page of it

Page = tuple[str, str | None, int | None]  # a stored page: its path, Content-Type, size
Found = tuple[list[str], str | None]  # a page's links as written and its <base href>


def page_links_of(page: Page | None, follow: frozenset[str], nofollow: bool) -> Found:
    """The links of a stored page (``links.page_links``); none for no page (its links
    are not followed), one that is not HTML, or one that cannot be read."""
    if page is None:
        return [], None
    path, content_type, size = page
    try:
        data = read_html(Path(path), content_type, size)
    except OSError:
        return [], None
    if data is None:
        return [], None
    return page_links(data, follow=follow, nofollow=nofollow)


class LinkReader:
    """Reads batches of pages for their links, following ``follow`` elements and
    honouring nofollow with ``nofollow``; ``stop`` at the end of the crawl."""

    def __init__(self, follow: frozenset[str], nofollow: bool) -> None:
        self.follow, self.nofollow = follow, nofollow
        self._child: Child | None = None
        self._pages = 0  # read in the thread so far
        self.spawn = supported()  # False once a start was tried

    async def read(self, pages: Sequence[Page | None]) -> list[Found]:
        """Each page's links, in order."""
        child = self._child
        if child is None and self.spawn and self._pages >= PROCESS_AFTER:
            self.spawn = False  # one try a crawl
            settings = json.dumps([sorted(self.follow), self.nofollow])
            child = self._child = await Child.start(__name__, [settings])
        if child is not None and child.ready:
            try:
                message = pickle.dumps(list(pages), protocol=pickle.HIGHEST_PROTOCOL)
                within = ANSWER_WITHIN + PAGE_WITHIN * len(pages)
                found: list[Found] | None = pickle.loads(await child.ask(message, within=within))
            except ChildEnded:
                self._child = None
                await child.stop(within=ANSWER_WITHIN)
            else:
                if found is not None:
                    return found
        self._pages += len(pages)
        follow, nofollow = self.follow, self.nofollow
        return await asyncio.to_thread(lambda: [page_links_of(p, follow, nofollow) for p in pages])

    async def stop(self) -> None:
        """End the child, if the crawl started one."""
        child, self._child = self._child, None
        if child is not None:
            await child.stop(within=ANSWER_WITHIN)


def main(argv: Sequence[str]) -> None:  # pragma: no cover - runs in the child process
    """The child: answer each batch of pages with their links (None when reading them
    raised: the run reads that batch again in its thread, where the error shows)."""
    if not detach():
        return
    follow_names, nofollow = json.loads(argv[0])
    follow = frozenset(follow_names)

    def answer(message: bytes) -> bytes:
        try:
            found = [page_links_of(page, follow, nofollow) for page in pickle.loads(message)]
        except Exception:
            return pickle.dumps(None)
        return pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)

    serve(answer)
