"""The limits of one run beside the worker pool: per-host slots and pauses, and pacers.

``Limits.slot(host_key(url))`` is entered once per request (each redirect hop included):
it waits for one of the host's slots, then for the host's pause (a 429's
``Retry-After``) and the rate limiters, per host and overall.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from yarl import URL

from fetcher.config import FetchConfig

__all__ = ["Limits", "Pacer", "Slot", "host_key", "make_limiter"]


class Pacer:
    """Starts spaced ``interval`` seconds apart, on a grid: no burst, and no drift.

    ``aiolimiter.AsyncLimiter(1, interval)`` (a bucket of one) counts each start from
    the moment its waiter woke up; a wake-up is late by the loop's timer resolution (a
    millisecond: epoll), and that lateness is lost every time (at ``--rate 100``, 91
    starts a second instead of 100). A bigger bucket absorbs it but lets a burst
    through: ``AsyncLimiter(rate, 1)`` starts nearly twice the rate in one second.
    Here each start takes the next slot of a grid, ``interval`` after the last slot
    (or now, after an idle spell): a late wake-up does not move the slots after it.
    """

    __slots__ = ("_next", "_step", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # A hair more than the interval: float rounding never makes a gap a hair short
        # (n + 1 starts in a window of n intervals).
        self._step = interval * (1 + 1e-9)
        self._next = -math.inf

    async def acquire(self) -> None:
        """Wait for this start's slot."""
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self._step  # taken now: waiters keep their order
        if slot > now:
            await asyncio.sleep(slot - now)

    def follow(self, other: Pacer) -> None:
        """Go on from ``other``'s grid: the next start comes ``interval`` after its last."""
        self._next = other._next - other._step + self._step


def make_limiter(rate: float) -> Pacer:
    """A limiter of ``rate`` starts per second, one every ``1 / rate`` seconds."""
    return Pacer(1 / rate)


def host_key(url: str | URL) -> str:
    """The key of a URL's host in ``Limits``: host and port."""
    parsed = url if isinstance(url, URL) else URL(url)
    return f"{parsed.host}:{parsed.port}"


@dataclass(slots=True)
class _Host:
    slots: asyncio.Semaphore
    limiter: Pacer | None
    resume_at: float = 0.0


@dataclass(slots=True)
class Limits:
    """Per-host concurrency, per-host pauses and the rate limiters of one run.

    The worker pool is the overall concurrency limit; these sit beside it. Pauses are
    kept on ``clock``, by default the running loop's time, which ``asyncio.sleep`` and
    the pacers use too (so a test can run them all on a fake clock).
    """

    per_host: int
    rate: float | None = None
    per_host_rate: float | None = None
    clock: Callable[[], float] | None = None
    _limiter: Pacer | None = None
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

    def set_host_delay(self, host: str, seconds: float) -> None:
        """Space the starts of ``host``'s requests by ``seconds`` (robots.txt Crawl-delay):
        one request per period, with no burst; the starts made already (robots.txt's
        own) count."""
        state = self._host(host)
        pacer = Pacer(seconds)
        if state.limiter is not None:
            pacer.follow(state.limiter)
        state.limiter = pacer

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
        await self._state.slots.acquire()
        try:
            await self._limits._wait(self._state)
        except BaseException:
            self._state.slots.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._state.slots.release()
