"""Where a run's requests come from: the job's rows, or a crawl that grows from them.

The runner's producer iterates a source and the recorder reports each outcome back to
it. The runner's ``_Rows`` streams the rows; ``CrawlSource`` puts the rows in the durable
frontier as seeds, hands out its pending URLs shallowest first, and once a page is
recorded adds the links it holds (within depth, scope, include/exclude and robots.txt):
the producer reads the pages recorded so far back in one batch, between the requests it
hands out (``link_reader``: in a worker thread, or a process of its own in a long crawl),
and sieves their links on the event loop. Either source yields a ``Request`` to fetch or
outcomes that need no request.

A stop (a signal or the deadline) leaves the pages not yet fetched in the frontier and
records them as ``interrupted``, as a batch records the rows it leaves: the run does not
count as finished, and ``--resume`` fetches them.

The manifest is written before the frontier hears of a page, so a crash in between
leaves a recorded page pending. On ``--resume`` such a page is not requested again: the
runs being resumed settle it, and its links are read from its stored copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from urllib.parse import urljoin

from yarl import URL

from fetcher import hosts
from fetcher.crawl import CrawlSettings, FetchFile, in_scope, normalize_url
from fetcher.frontier import Entry, Frontier
from fetcher.jobs import Job
from fetcher.link_reader import LinkReader, Page, page_links_of
from fetcher.links import MAX_SITEMAP_BYTES as _MAX_SITEMAP
from fetcher.links import LinkSieve, parse_sitemap
from fetcher.models import (
    ErrorKind,
    Outcome,
    Request,
    interrupted_outcome,
    invalid_outcome,
    same_origin,
    skipped_outcome,
)
from fetcher.paths import meta_path
from fetcher.robots import RobotsCache

__all__ = ["CrawlSource", "Settle"]

Settle = Callable[[Request], "Outcome | None"]
_TAKE = 64
_MAX_SITEMAPS_PER_ORIGIN = 50


class CrawlSource:
    """The requests of a crawl: seeds from the job, then the pages they lead to.

    Args:
        job: the job whose rows are the seeds.
        settings: the ``[crawl]`` settings.
        frontier: the durable frontier (fresh, or resumed).
        root: the output directory (stored pages are read back for their links).
        robots: the robots.txt cache, or None with ``ignore_robots``.
        fetch: fetches sitemaps as the run sends its rows.
        stopped: tells whether the run is stopping.
        now: the current time as the manifest writes it.
        settle: the outcome that the runs being resumed recorded for a request, or
            None when it is still to fetch.
    """

    def __init__(
        self,
        job: Job,
        settings: CrawlSettings,
        *,
        frontier: Frontier,
        root: Path,
        robots: RobotsCache | None,
        fetch: FetchFile,
        stopped: Callable[[], bool],
        now: Callable[[], str],
        settle: Settle,
    ) -> None:
        self.job, self.settings, self.frontier, self.root = job, settings, frontier, root
        self.robots, self.fetch, self.stopped, self.now = robots, fetch, stopped, now
        self.settle = settle
        self.seeds: dict[int, Request] = {}
        self.dispatched = 0
        self._flying: dict[str, int] = {}  # URL -> depth, of the pages in flight
        self._unread: list[Outcome] = []  # recorded pages (in flight) whose links to read
        self._changed = asyncio.Event()
        self._sieve = LinkSieve(settings)
        self._seed_urls: dict[int, str] = {}  # row line -> its URL normalised
        self._reader = LinkReader(settings.follow_set, settings.nofollow)

    async def aclose(self) -> None:
        """End the link reader's process, if any, and close the frontier."""
        try:
            await self._reader.stop()
        finally:
            self.frontier.close()

    # -- the producer's side ------------------------------------------------------

    async def items(self) -> AsyncIterator[Request | Outcome | list[Outcome]]:
        """Yield each request to send, or outcomes that need none."""
        async for item in self._seed():
            yield item
        if self.settings.sitemaps:
            await self._read_sitemaps()
        cap = self.settings.max_pages
        while not self.stopped():
            await self._read_links()
            room = _TAKE if cap is None else min(_TAKE, cap - self.dispatched)
            if room <= 0:
                await self._land()
                return
            # Level by level, as breadth-first search: a page of depth d+1 is taken only
            # when every page of depth d is done, so each URL gets its shortest depth.
            level = self.frontier.lowest_pending()
            if level is None or (self._flying and min(self._flying.values()) < level):
                if not self._flying:
                    return
                await self._next_recorded()
                continue
            for entry in self.frontier.take(room, level):
                request = self._request(entry)
                if self._recorded_before(entry, request):
                    continue
                if (
                    not self.stopped()
                    and self.robots is not None
                    and not await self.robots.allowed(entry.url, seed=self._seed_of(entry))
                    and not self.stopped()  # a stop cut the robots.txt fetch short
                ):
                    self.frontier.finish([entry.url])  # never requested; recorded as skipped
                    yield skipped_outcome(request, self.now())
                    continue
                if self.stopped():
                    yield interrupted_outcome(request, self.now())  # it stays taken
                    continue
                self._flying[entry.url] = entry.depth
                self.dispatched += 1
                yield request
        if cap is None or self.dispatched < cap:
            async for outcomes in self._left():
                yield outcomes

    async def _next_recorded(self) -> None:
        """Wait for the recorder to record pages in flight, and read their links."""
        if not self._unread:
            self._changed.clear()
            await self._changed.wait()
        await self._read_links()

    async def _land(self) -> None:
        """Wait for every page in flight to be recorded, and read their links."""
        while self._flying:
            await self._next_recorded()

    async def _left(self) -> AsyncIterator[list[Outcome]]:
        """After a stop, the pages not fetched (those in flight and their links first),
        recorded as interrupted; they stay in the frontier, so ``--resume`` fetches them."""
        await self._land()
        while entries := self.frontier.take(1000):
            left = []
            for entry in entries:
                request = self._request(entry)
                if not self._recorded_before(entry, request):
                    left.append(interrupted_outcome(request, self.now()))
            if left:
                yield left

    async def _seed(self) -> AsyncIterator[Outcome]:
        batch: list[Entry] = []
        for request in self.job.requests():
            if request.invalid is not None:
                yield invalid_outcome(request, self.now())
                continue
            url = normalize_url(request.url, strip_query=self.settings.strip_query) or request.url
            self.seeds[request.line] = request
            self._seed_urls[request.line] = url
            batch.append(Entry(url, 0, None, request.line))
            if len(batch) >= 1000:
                self.frontier.add(batch)
                batch = []
        self.frontier.add(batch)

    def _request(self, entry: Entry) -> Request:
        seed = self.seeds.get(entry.seed)
        if seed is None:  # a resumed crawl whose job lost that row: a GET, the run headers
            plain = self.job.plain_request(entry.url, seed="")
            return dataclasses.replace(
                plain, line=entry.seed, depth=entry.depth, parent=entry.parent
            )
        if entry.depth == 0 and entry.parent is None and entry.url == self._seed_urls[seed.line]:
            return dataclasses.replace(seed, url=entry.url, depth=0)
        page = dataclasses.replace(
            seed,
            url=entry.url,
            redacted_url=None,  # a found URL is the page's: no template put a secret in it
            method="GET",
            body=None,
            form=None,
            out=None,
            depth=entry.depth,
            parent=entry.parent,
        )
        # The row's secrets go to its own origin only, as over a redirect.
        return page if same_origin(entry.url, seed.url) else page.without_secrets()

    def _seed_of(self, entry: Entry) -> str:
        """The URL of the row an entry came from ("" when a resumed job lost it)."""
        seed = self.seeds.get(entry.seed)
        return seed.url if seed is not None else ""

    def _recorded_before(self, entry: Entry, request: Request) -> bool:
        """True for a page that the runs being resumed recorded and stored, though a crash
        came before the frontier heard: it is done, with the links of its stored copy."""
        outcome = self.settle(request)
        if outcome is None or outcome.path is None:  # no copy to read links from: fetch
            return False
        self.frontier.finish([entry.url], self._links(self._as_fetched(outcome)))
        return True

    def _as_fetched(self, outcome: Outcome) -> Outcome:
        """A stored page's outcome with the final URL and Content-Type of its sidecar."""
        assert outcome.path is not None
        try:
            meta = json.loads((self.root / meta_path(outcome.path)).read_bytes())
            final_url = str(meta["final_url"] or outcome.request.url)
            headers = [(str(name).lower(), str(value)) for name, value in meta["headers"]]
        except (OSError, ValueError, LookupError, TypeError):
            return outcome  # its Content-Type is sniffed, its links resolved against its URL
        content_type = next((value for name, value in headers if name == "content-type"), None)
        return dataclasses.replace(outcome, final_url=final_url, content_type=content_type)

    # -- the recorder's side --------------------------------------------------------

    def recorded(self, outcomes: Sequence[Outcome]) -> None:
        """Mark recorded pages done, but those a stop interrupted (they stay taken, so
        ``--resume`` fetches them) and those that may hold links to follow: the producer
        reads their links (``_read_links``), and they stay in flight until then."""
        done = []
        for outcome in outcomes:
            url = outcome.request.url
            if url not in self._flying:
                continue
            if outcome.error is not None and outcome.error.kind is ErrorKind.INTERRUPTED:
                del self._flying[url]
            elif self._may_link(outcome):
                self._unread.append(outcome)
            else:
                del self._flying[url]
                done.append(url)
        if done:
            self.frontier.finish(done)
        self._changed.set()

    async def _read_links(self) -> None:
        """Add the links of the pages recorded since the last call to the frontier, and
        mark those pages done, in one transaction. The pages are read and parsed by the
        link reader, off the event loop; their links are sieved here."""
        if self._unread:
            pages, self._unread = self._unread, []
            parsed = await self._reader.read([self._page(page) for page in pages])
            found = [
                entry
                for page, (links, base) in zip(pages, parsed, strict=True)
                for entry in self._entries(page, links, base)
            ]
            self.frontier.finish([page.request.url for page in pages], found)
            for page in pages:
                del self._flying[page.request.url]

    def _may_link(self, outcome: Outcome) -> bool:
        depth = outcome.request.depth or 0
        return outcome.ok and outcome.path is not None and depth < self.settings.depth

    def _links(self, outcome: Outcome) -> list[Entry]:
        return self._entries(outcome, *self._parse(outcome))

    def _parse(self, outcome: Outcome) -> tuple[list[str], str | None]:
        """The links of a recorded page as written and its ``<base href>`` (none for a
        page that is not HTML, cannot be read, or whose links are not followed)."""
        settings = self.settings
        return page_links_of(self._page(outcome), settings.follow_set, settings.nofollow)

    def _page(self, outcome: Outcome) -> Page | None:
        """A recorded page to read for its links; None when they are not followed."""
        if not self._may_link(outcome) or outcome.path is None:
            return None
        return (str(self.root / outcome.path), outcome.content_type, outcome.size)

    def _entries(self, outcome: Outcome, links: list[str], base: str | None) -> list[Entry]:
        """The frontier's new entries among a page's links."""
        if not links:
            return []
        request = outcome.request
        root = outcome.final_url or request.url
        if base:
            with contextlib.suppress(ValueError):  # a base that is no URL is ignored
                root = urljoin(root, base)
        seed_url = self._seed_urls.get(request.line, request.url)
        depth = (request.depth or 0) + 1
        return [
            Entry(url, depth, request.url, request.line)
            for url in self._sieve.new_urls(links, root, seed_url)
        ]

    # -- sitemaps ---------------------------------------------------------------------

    async def _read_sitemaps(self) -> None:
        origins: dict[str, int] = {}
        for line, seed in self.seeds.items():
            found = hosts.origin(seed.url)
            origin = found.url if found is not None else str(URL(seed.url).origin())
            origins.setdefault(origin, line)
        for origin, line in origins.items():
            queue = [f"{origin}/sitemap.xml"]
            if self.robots is not None:
                queue.extend(await self.robots.sitemaps(origin + "/"))
            seen: set[str] = set()
            seed_url = self._seed_urls[line]
            while queue and len(seen) < _MAX_SITEMAPS_PER_ORIGIN and not self.stopped():
                sitemap = queue.pop(0)
                if sitemap in seen:
                    continue
                seen.add(sitemap)
                pages, more = parse_sitemap(await self._get(sitemap, seed_url))
                queue.extend(more)
                entries = []
                for page in pages:
                    url = normalize_url(page, strip_query=self.settings.strip_query)
                    if (
                        url
                        and in_scope(url, seed_url, self.settings.scope)
                        and (self.settings.allows(url))
                    ):
                        entries.append(Entry(url, 0, None, line))
                self.frontier.add(entries)

    async def _get(self, url: str, seed: str) -> bytes:
        status, data = await self.fetch(url, seed=seed, max_bytes=_MAX_SITEMAP)
        return data if status == 200 else b""
