"""The limits of one run beside the worker pool: per-host slots and pauses, and rate limiters.

``Limits.slot(host_key(url))`` is entered once per request (each redirect hop included):
it waits for one of the host's slots, then for the host's pause (a 429's
``Retry-After``) and the rate limiters, per host and overall.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter
from yarl import URL

from fetcher.config import FetchConfig
from fetcher.hosts import origin

__all__ = ["BURST", "Limits", "Slot", "host_key", "make_limiter"]


BURST = 0.05  # seconds of starts a limiter may let through at once (one start at least)


def make_limiter(rate: float) -> AsyncLimiter:
    """A limiter of ``rate`` starts per second: aiolimiter's leaky bucket, sized to hold
    a twentieth of a second of starts (one, at least).

    The size is the trade. A bucket of one (``AsyncLimiter(1, 1 / rate)``) counts each
    start from the moment its waiter woke up; a wake-up is late by the loop's timer
    resolution (a millisecond: epoll), and that lateness is lost every time (at
    ``--rate 100``, 91 starts a second instead of 100). A bucket of ``rate``
    (``AsyncLimiter(rate, 1)``) absorbs it but lets nearly twice the rate through in one
    second. A twentieth of a second absorbs the lateness and lets at most ``rate / 20``
    more than the rate through in any one second: W4 (``--rate 100``, 3,000 URLs) got
    100.1 starts a second, the busiest second 105. Below 20 a second the bucket is one
    and a late wake-up is lost again, a millisecond per start: 1.5 % at 19 a second,
    0.4 % at 10.
    """
    size = max(1.0, rate * BURST)
    return AsyncLimiter(size, size / rate)


def host_key(url: str | URL) -> str:
    """The key of a URL's host in ``Limits``: ``hosts.Origin.key``, its host and port
    (``[::1]:8080``), so every spelling of one host shares its limits (``HTTP://Example.COM.``
    and ``http://example.com:80``). A URL with no host (never sent) keys on itself."""
    found = origin(url)
    return found.key if found is not None else str(url)


@dataclass(slots=True)
class _Host:
    slots: asyncio.Semaphore
    limiter: AsyncLimiter | None
    resume_at: float = 0.0


@dataclass(slots=True)
class Limits:
    """Per-host concurrency, per-host pauses and the rate limiters of one run.

    The worker pool is the overall concurrency limit; these sit beside it. Pauses are
    kept on ``clock``, by default the running loop's time, which ``asyncio.sleep`` and
    the rate limiters use too (so a test can run them all on a fake clock).
    """

    per_host: int
    rate: float | None = None
    per_host_rate: float | None = None
    clock: Callable[[], float] | None = None
    _limiter: AsyncLimiter | None = None
    _hosts: dict[str, _Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate is not None:
            self._limiter = make_limiter(self.rate)

    @classmethod
    def from_config(cls, config: FetchConfig) -> Limits:
        return cls(per_host=config.host_slots, rate=config.rate, per_host_rate=config.host_rate)

    def _host(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            limiter = make_limiter(self.per_host_rate) if self.per_host_rate else None
            state = self._hosts[host] = _Host(asyncio.Semaphore(self.per_host), limiter)
        return state

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    def pause_host(self, host: str, seconds: float) -> None:
        """Start no request to ``host`` for ``seconds`` (a 429 or 503 said so)."""
        state = self._host(host)
        state.resume_at = max(state.resume_at, self._now() + seconds)

    async def set_host_delay(self, host: str, seconds: float) -> None:
        """Space the starts of ``host``'s requests by ``seconds`` (robots.txt Crawl-delay):
        one request per period, with no burst, the first a period after now (when
        robots.txt's answer is read), so robots.txt's own request counts. aiolimiter
        cannot carry the starts of the host's limiter over to a new one, so the new one
        counts a start now: a little more than a period after robots.txt's request
        started, never less."""
        state = self._host(host)
        limiter = AsyncLimiter(1, seconds)
        await limiter.acquire()  # an empty bucket: this never waits
        state.limiter = limiter

    def slot(self, host: str) -> Slot:
        """Hold one of ``host``'s slots, after its pause and the rate limiters
        (``async with limits.slot(host):``)."""
        return Slot(self, self._host(host))

    async def _wait(self, state: _Host) -> None:
        # A pause may begin or grow while we wait for it or for a limiter (another
        # 429), so look again after each wait; a start the pause cut short is lost.
        while True:
            while (wait := state.resume_at - self._now()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            if state.limiter is not None:
                await state.limiter.acquire()
            if self._limiter is not None:
                await self._limiter.acquire()
            if state.resume_at <= self._now():
                return


class Slot:
    """``Limits.slot``: a plain class, as it is entered once per request."""

    __slots__ = ("_limits", "_state")

    def __init__(self, limits: Limits, state: _Host) -> None:
        self._limits, self._state = limits, state

    async def __aenter__(self) -> None:
        state, limits = self._state, self._limits
        await state.slots.acquire()
        if not state.resume_at and state.limiter is None and limits._limiter is None:
            return  # never paused, no rate: nothing to wait for (and no clock to read)
        try:
            await limits._wait(state)
        except BaseException:
            state.slots.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._state.slots.release()
