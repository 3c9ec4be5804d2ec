"""robots.txt: fetched once per host as the rows are sent, cached for the run, obeyed.

Follows RFC 9309: a 4xx answer means no rules (everything allowed); a 5xx answer or an
unreachable server means everything is disallowed for that host in this run. A
``Crawl-delay`` becomes that host's rate. robots.txt is not a page: it has no manifest
record and does not count against ``max_pages``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.robotparser import RobotFileParser

from yarl import URL

from fetcher import hosts
from fetcher.crawl import FetchFile

__all__ = ["MAX_ROBOTS_BYTES", "RobotsCache"]

MAX_ROBOTS_BYTES = 512 * 1024  # RFC 9309 asks crawlers to read at least 500 KiB


def _crawl_delays(lines: list[str]) -> dict[str, float]:
    """``Crawl-delay`` per user-agent group, fractions allowed (the standard library's
    parser takes whole seconds only)."""
    delays: dict[str, float] = {}
    agents: list[str] = []
    in_rules = False
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
            continue
        in_rules = True
        if name == "crawl-delay":
            try:
                seconds = float(value)
            except ValueError:
                continue
            if 0 < seconds < float("inf"):
                for agent in agents:
                    delays.setdefault(agent, seconds)
    return delays


def _disallows(lines: list[str]) -> bool:
    """True when a ``Disallow`` line names a path (an empty one allows everything)."""
    for raw in lines:
        name, sep, value = raw.split("#", 1)[0].partition(":")
        if sep and name.strip().lower() == "disallow" and value.strip():
            return True
    return False


class _Rules:
    """The parsed rules of one host, or a blanket answer."""

    def __init__(
        self,
        parser: RobotFileParser | None,
        *,
        allow_all: bool,
        delays: dict[str, float] | None = None,
        disallows: bool = True,
    ) -> None:
        self.parser, self.allow_all = parser, allow_all
        self.delays = delays or {}
        self.disallows = disallows  # False: no rule to check a URL against (10 us a URL)

    def allowed(self, agent: str, url: str) -> bool:
        if self.parser is None:
            return self.allow_all
        return not self.disallows or self.parser.can_fetch(agent, url)

    def delay(self, agent: str) -> float | None:
        token = agent.split("/", 1)[0].lower()
        for name, seconds in self.delays.items():
            if name != "*" and name in token:
                return seconds
        return self.delays.get("*")

    def sitemaps(self) -> list[str]:
        if self.parser is None:
            return []
        return list(self.parser.site_maps() or [])


class RobotsCache:
    """robots.txt rules per origin, fetched on first use (once, even when asked for
    concurrently).

    Args:
        fetch: fetches robots.txt as the run sends its rows (its headers, host slots,
            rate limiters, ``--timeout``, redirects, and a stop's grace period).
        agent: the User-Agent token matched against the rules.
        on_delay: awaited with ``(url, seconds)`` when a host asks for a Crawl-delay.
    """

    def __init__(
        self,
        fetch: FetchFile,
        *,
        agent: str,
        on_delay: Callable[[str, float], Awaitable[None]] | None = None,
    ) -> None:
        self.fetch, self.agent, self.on_delay = fetch, agent, on_delay
        self._rules: dict[str, asyncio.Future[_Rules]] = {}

    async def allowed(self, url: str, *, seed: str) -> bool:
        """True when robots.txt lets this crawler fetch ``url``, a page of the row whose
        URL is ``seed`` (robots.txt carries the secret headers on the seed's origin only)."""
        rules = await self._for(url, seed)
        return rules.allowed(self.agent, url)

    async def sitemaps(self, url: str) -> list[str]:
        """The sitemaps named in the robots.txt of ``url``'s origin, that of a row."""
        return (await self._for(url, url)).sitemaps()

    async def _for(self, url: str, seed: str) -> _Rules:
        found = hosts.origin(url)  # one robots.txt for every spelling of the host
        origin = found.url if found is not None else str(URL(url).origin())
        future = self._rules.get(origin)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._rules[origin] = future
            try:
                rules = await self._fetch(origin, seed)
            except BaseException as exc:
                del self._rules[origin]
                future.set_exception(exc)
                future.exception()  # the waiters see it; do not warn about it unretrieved
                raise
            future.set_result(rules)
            delay = rules.delay(self.agent)
            if delay and self.on_delay is not None:
                await self.on_delay(origin, delay)
            return rules
        return await asyncio.shield(future)

    async def _fetch(self, origin: str, seed: str) -> _Rules:
        url = f"{origin}/robots.txt"
        status, data = await self.fetch(url, seed=seed, max_bytes=MAX_ROBOTS_BYTES)
        if 400 <= status < 500:
            return _Rules(None, allow_all=True)
        if status == 0 or status >= 500:  # no answer, or a server error
            return _Rules(None, allow_all=False)
        lines = data.decode("utf-8", "replace").splitlines()
        parser = RobotFileParser()
        parser.parse(lines)
        return _Rules(
            parser, allow_all=True, delays=_crawl_delays(lines), disallows=_disallows(lines)
        )
